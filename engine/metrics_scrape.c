/* GET /metrics: the text of every metric, summed over the workers' cells (metrics.h) and
 * read from the shared state the admin API reads for /status. Main thread. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "h2_stats.h"
#include "health.h"
#include "lua_vm.h"
#include "metrics.h"
#include "metrics_scrape.h"
#include "rtable.h"
#include "logw.h"
#include "shdict.h"
#include "cache_store.h"
#include "trace.h"
#include "worker.h"

#define NS 1e-9

static const lp_mblock_t *find(const char *family, const char *a, const char *b)
{
    char key[512];
    size_t kl = lp_metrics_key(key, sizeof(key), family, a, b, NULL);
    return kl ? lp_metrics_find(&lp_metrics, key, kl) : NULL;
}

static double sum(const lp_mblock_t *b, size_t i)
{
    return b ? (double)lp_metrics_sum(&lp_metrics, b, i) : 0.0;
}

/* The route labels: the config's routes, then the admin routes of the table in use (one
 * whose name a config route has shares its series), then "" (none matched). */
typedef struct {
    const lp_config_t *cfg; /* borrowed */
    const char **extra;     /* owned array of nextra: admin route names (borrowed strings) */
    size_t nextra;
} labels_t;

static size_t nlabels(const labels_t *lb)
{
    return lb->cfg->nroutes + lb->nextra + 1;
}

static const char *label(const labels_t *lb, size_t i)
{
    if (i < lb->cfg->nroutes)
        return lb->cfg->routes[i].name;
    i -= lb->cfg->nroutes;
    return i < lb->nextra ? lb->extra[i] : "";
}

static void labels_init(labels_t *lb, const lp_config_t *cfg, const lp_rtable_t *rt)
{
    *lb = (labels_t){cfg, NULL, 0};
    if (!rt || !rt->nown || !(lb->extra = calloc(rt->nown, sizeof(*lb->extra))))
        return;
    for (size_t j = 0; j < rt->nown; j++) {
        const char *n = rt->own[j].name;
        size_t i = 0;
        while (i < cfg->nroutes && strcmp(cfg->routes[i].name, n) != 0)
            i++;
        if (i == cfg->nroutes)
            lb->extra[lb->nextra++] = n;
    }
}

static void routes(lp_mtext_t *t, const lp_config_t *cfg, const lp_rtable_t *rt)
{
    labels_t lbs;
    labels_init(&lbs, cfg, rt);
    const labels_t *lb = &lbs;
    static const char *const classes[] = {"1xx", "2xx", "3xx", "4xx", "5xx"};
    lp_mtext_family(t, "luaproxy_requests_total", "counter",
                    "Requests answered, by route and status class (an empty route: none matched).");
    for (size_t i = 0; i < nlabels(lb); i++) {
        const lp_mblock_t *b = find("route", label(lb, i), NULL);
        for (unsigned k = 0; b && k < 5; k++) {
            const char *l[] = {"route", label(lb, i), "code", classes[k]};
            lp_mtext_sample(t, "luaproxy_requests_total", "", l, 2, sum(b, LP_MR_CLASS + k));
        }
    }
    lp_mtext_family(t, "luaproxy_request_duration_seconds", "histogram",
                    "Time from the request head read to the last byte of the response queued.");
    uint64_t counts[LP_M_MAX_BUCKETS + 1];
    for (size_t i = 0; i < nlabels(lb); i++) {
        const lp_mblock_t *b = find("route", label(lb, i), NULL);
        if (!b)
            continue;
        for (unsigned k = 0; k <= lp_metrics.nbounds; k++)
            counts[k] = lp_metrics_sum(&lp_metrics, b, LP_MR_BUCKETS + k);
        const char *l[] = {"route", label(lb, i)};
        lp_mtext_histogram(t, "luaproxy_request_duration_seconds", l, 1, lp_metrics.bounds,
                           lp_metrics.nbounds, counts, sum(b, LP_MR_SUM_NS) * NS);
    }
    static const struct {
        const char *name, *help;
        size_t cell;
    } bytes[] = {
        {"luaproxy_request_bytes_total", "Request body bytes read from clients.", LP_MR_BYTES_IN},
        {"luaproxy_response_bytes_total", "Response body bytes sent to clients.", LP_MR_BYTES_OUT},
    };
    for (size_t j = 0; j < LP_ARRAY_LEN(bytes); j++) {
        lp_mtext_family(t, bytes[j].name, "counter", bytes[j].help);
        for (size_t i = 0; i < nlabels(lb); i++) {
            const lp_mblock_t *b = find("route", label(lb, i), NULL);
            const char *l[] = {"route", label(lb, i)};
            if (b)
                lp_mtext_sample(t, bytes[j].name, "", l, 1, sum(b, bytes[j].cell));
        }
    }
    free(lbs.extra);
}

static void upstreams(lp_mtext_t *t, const lp_config_t *cfg)
{
    lp_mtext_family(t, "luaproxy_upstream_response_seconds", "histogram",
                    "Time from the first try at the upstream to the end of the response.");
    uint64_t counts[LP_M_MAX_BUCKETS + 1];
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const lp_mblock_t *b = find("upstream", cfg->upstreams[i].name, NULL);
        if (!b)
            continue;
        for (unsigned k = 0; k <= lp_metrics.nbounds; k++)
            counts[k] = lp_metrics_sum(&lp_metrics, b, LP_MU_BUCKETS + k);
        const char *l[] = {"upstream", cfg->upstreams[i].name};
        lp_mtext_histogram(t, "luaproxy_upstream_response_seconds", l, 1, lp_metrics.bounds,
                           lp_metrics.nbounds, counts, sum(b, LP_MU_SUM_NS) * NS);
    }
    static const struct {
        const char *name, *type, *help;
        size_t cell;
    } per[] = {
        {"luaproxy_upstream_retries_total", "counter", "Tries after the first.", LP_MU_RETRIES},
        {"luaproxy_upstream_ejections_total", "counter",
         "Targets ejected by the passive health check.", LP_MU_EJECTIONS},
        {"luaproxy_upstream_dns_resolutions_total", "counter",
         "Resolutions of the upstream's DNS targets.", LP_MU_DNS},
        {"luaproxy_upstream_queue_length", "gauge",
         "Requests waiting for a max_connections slot, all workers.", LP_MU_QUEUE},
    };
    for (size_t j = 0; j < LP_ARRAY_LEN(per); j++) {
        lp_mtext_family(t, per[j].name, per[j].type, per[j].help);
        for (size_t i = 0; i < cfg->nupstreams; i++) {
            const lp_mblock_t *b = find("upstream", cfg->upstreams[i].name, NULL);
            const char *l[] = {"upstream", cfg->upstreams[i].name};
            if (b)
                lp_mtext_sample(t, per[j].name, "", l, 1, sum(b, per[j].cell));
        }
    }
    lp_mtext_family(t, "luaproxy_upstream_inflight", "gauge",
                    "Tries in progress to the target, all workers.");
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const lp_upstream_conf_t *u = &cfg->upstreams[i];
        for (size_t j = 0; j < u->ntargets; j++) {
            size_t na;
            const lp_addr_t *addrs = lp_target_addrs(&u->targets[j], &na);
            for (size_t k = 0; k < na; k++) {
                const lp_mblock_t *b = find("target", u->name, addrs[k].text);
                if (!b)
                    continue;
                /* Ended is read first: a try that ends between the reads is not negative. */
                uint64_t ended = lp_metrics_sum(&lp_metrics, b, LP_MT_ENDED);
                uint64_t started = lp_metrics_sum(&lp_metrics, b, LP_MT_STARTED);
                const char *l[] = {"upstream", u->name, "target", addrs[k].text};
                lp_mtext_sample(t, "luaproxy_upstream_inflight", "", l, 2,
                                started > ended ? (double)(started - ended) : 0.0);
            }
        }
    }
    lp_mtext_family(t, "luaproxy_upstream_latency_ewma_seconds", "gauge",
                    "The p2c balancer's latency EWMA of the target (mean over the workers "
                    "that measured it).");
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const lp_upstream_conf_t *u = &cfg->upstreams[i];
        if (strcmp(u->balance, "p2c") != 0)
            continue;
        for (size_t j = 0; j < u->ntargets; j++) {
            size_t na;
            const lp_addr_t *addrs = lp_target_addrs(&u->targets[j], &na);
            for (size_t k = 0; k < na; k++) {
                const lp_mblock_t *b = find("target", u->name, addrs[k].text);
                double sum = 0;
                unsigned nw = 0;
                for (unsigned w = 0; b && w < lp_metrics.nworkers; w++) {
                    uint64_t v = LP_M_GET(&b->cells[w][LP_MT_EWMA_NS]);
                    sum += (double)v;
                    nw += v != 0;
                }
                if (!nw)
                    continue;
                const char *l[] = {"upstream", u->name, "target", addrs[k].text};
                lp_mtext_sample(t, "luaproxy_upstream_latency_ewma_seconds", "", l, 2,
                                sum / nw * NS);
            }
        }
    }
    lp_mtext_family(t, "luaproxy_upstream_target_healthy", "gauge",
                    "1 when the target may be picked (up), 0 when down, ejected, drained or "
                    "disabled.");
    uint64_t now = lp_health_now();
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const lp_upstream_conf_t *u = &cfg->upstreams[i];
        for (size_t j = 0; j < u->ntargets; j++) {
            size_t na;
            const lp_addr_t *addrs = lp_target_addrs(&u->targets[j], &na);
            for (size_t k = 0; k < na; k++) {
                lp_health_t *h = lp_health_get(addrs[k].text);
                if (!h)
                    continue;
                const char *l[] = {"upstream", u->name, "target", addrs[k].text};
                lp_mtext_sample(t, "luaproxy_upstream_target_healthy", "", l, 2,
                                strcmp(lp_health_state(h, now), "up") == 0);
            }
        }
    }
}

/* The response cache's zones (cache_store.h): what they hold and their counters. */
static void cache_zones(lp_mtext_t *t, const lp_config_t *cfg)
{
    static const char *const gauges[] = {"luaproxy_cache_entries", "luaproxy_cache_bytes",
                                         "luaproxy_cache_capacity_bytes"};
    static const char *const ghelp[] = {"Entries held by the cache zone.",
                                        "Bytes held by the cache zone.",
                                        "Byte budget of the cache zone."};
    static const char *const results[] = {"hit",   "miss",        "expired",
                                          "stale", "revalidated", "bypass"};
    static const char *const fills[] = {"stored", "abandoned"};
    for (int j = 0; j < 3; j++) {
        lp_mtext_family(t, gauges[j], "gauge", ghelp[j]);
        for (size_t i = 0; i < cfg->ncache_zones; i++) {
            lp_cache_stats_t st;
            lp_cache_zone_stats(cfg->cache_zones[i], &st);
            const char *l[] = {"zone", lp_cache_zone_name(cfg->cache_zones[i])};
            uint64_t v = j == 0 ? st.entries : j == 1 ? st.bytes : st.capacity;
            lp_mtext_sample(t, gauges[j], "", l, 1, (double)v);
        }
    }
    /* One family at a time: its samples follow its own TYPE line (OpenMetrics). */
    lp_mtext_family(t, "luaproxy_cache_requests_total", "counter",
                    "Requests the cache plugin decided on, by result.");
    for (size_t i = 0; i < cfg->ncache_zones; i++) {
        lp_cache_stats_t st;
        lp_cache_zone_stats(cfg->cache_zones[i], &st);
        for (int j = 0; j < 6; j++) {
            const char *l[] = {"zone", lp_cache_zone_name(cfg->cache_zones[i]), "result",
                               results[j]};
            lp_mtext_sample(t, "luaproxy_cache_requests_total", "", l, 2,
                            (double)st.counts[LP_CACHE_C_HIT + j]);
        }
    }
    lp_mtext_family(t, "luaproxy_cache_fills_total", "counter",
                    "Responses gathered into the cache zone, by result.");
    for (size_t i = 0; i < cfg->ncache_zones; i++) {
        lp_cache_stats_t st;
        lp_cache_zone_stats(cfg->cache_zones[i], &st);
        for (int j = 0; j < 2; j++) {
            const char *l[] = {"zone", lp_cache_zone_name(cfg->cache_zones[i]), "result", fills[j]};
            lp_mtext_sample(t, "luaproxy_cache_fills_total", "", l, 2,
                            (double)st.counts[LP_CACHE_C_STORED + j]);
        }
    }
    lp_mtext_family(t, "luaproxy_cache_evictions_total", "counter",
                    "Entries pushed out of the cache zone by its byte budget.");
    for (size_t i = 0; i < cfg->ncache_zones; i++) {
        lp_cache_stats_t st;
        lp_cache_zone_stats(cfg->cache_zones[i], &st);
        const char *l[] = {"zone", lp_cache_zone_name(cfg->cache_zones[i])};
        lp_mtext_sample(t, "luaproxy_cache_evictions_total", "", l, 1,
                        (double)st.counts[LP_CACHE_C_EVICTED]);
    }
    lp_mtext_family(t, "luaproxy_cache_variants_dropped_total", "counter",
                    "Vary variants dropped for a key's new one (over 32 a key): the least "
                    "recently used.");
    for (size_t i = 0; i < cfg->ncache_zones; i++) {
        lp_cache_stats_t st;
        lp_cache_zone_stats(cfg->cache_zones[i], &st);
        const char *l[] = {"zone", lp_cache_zone_name(cfg->cache_zones[i])};
        lp_mtext_sample(t, "luaproxy_cache_variants_dropped_total", "", l, 1,
                        (double)st.counts[LP_CACHE_C_VARIANTS_DROPPED]);
    }
    static const char *const natives[] = {"miss", "stored", "hit"};
    lp_mtext_family(t, "luaproxy_cache_native_total", "counter",
                    "Cache plugin outcomes the engine replayed without Lua, by result.");
    for (size_t i = 0; i < cfg->ncache_zones; i++) {
        lp_cache_stats_t st;
        lp_cache_zone_stats(cfg->cache_zones[i], &st);
        for (int j = 0; j < 3; j++) {
            const char *l[] = {"zone", lp_cache_zone_name(cfg->cache_zones[i]), "result",
                               natives[j]};
            lp_mtext_sample(t, "luaproxy_cache_native_total", "", l, 2,
                            (double)st.counts[LP_CACHE_C_NATIVE_MISS + j]);
        }
    }
    /* The disk tier, for the zones that have one. */
    static const char *const dgauges[] = {"luaproxy_cache_disk_entries",
                                          "luaproxy_cache_disk_bytes"};
    static const char *const dghelp[] = {"Entries in the cache zone's files.",
                                         "File bytes of the cache zone's disk tier."};
    for (int j = 0; j < 2; j++) {
        lp_mtext_family(t, dgauges[j], "gauge", dghelp[j]);
        for (size_t i = 0; i < cfg->ncache_zones; i++) {
            lp_cache_stats_t st;
            lp_cache_zone_stats(cfg->cache_zones[i], &st);
            if (!st.disk)
                continue;
            const char *l[] = {"zone", lp_cache_zone_name(cfg->cache_zones[i])};
            lp_mtext_sample(t, dgauges[j], "", l, 1,
                            (double)(j == 0 ? st.disk_entries : st.disk_bytes));
        }
    }
    static const char *const devents[] = {"loaded", "streamed", "dropped", "evicted"};
    static const int dcounts[] = {LP_CACHE_C_DISK_LOADED, LP_CACHE_C_DISK_STREAMED,
                                  LP_CACHE_C_DISK_DROPPED, LP_CACHE_C_DISK_EVICTED};
    lp_mtext_family(t, "luaproxy_cache_disk_events_total", "counter",
                    "Disk tier events of the cache zone: files read back for hits, served "
                    "from the file for hits, found damaged, pushed out by the disk budget.");
    for (size_t i = 0; i < cfg->ncache_zones; i++) {
        lp_cache_stats_t st;
        lp_cache_zone_stats(cfg->cache_zones[i], &st);
        if (!st.disk)
            continue;
        for (int j = 0; j < 4; j++) {
            const char *l[] = {"zone", lp_cache_zone_name(cfg->cache_zones[i]), "event",
                               devents[j]};
            lp_mtext_sample(t, "luaproxy_cache_disk_events_total", "", l, 2,
                            (double)st.counts[dcounts[j]]);
        }
    }
}

static void process(lp_mtext_t *t, const lp_server_t *s, const lp_config_t *cfg)
{
    uint64_t conns, reqs;
    lp_workers_stats(s->workers, s->nworkers, &conns, &reqs);
    lp_mtext_family(t, "luaproxy_connections_open", "gauge", "Client connections open.");
    lp_mtext_sample(t, "luaproxy_connections_open", "", NULL, 0, (double)conns);
    static const struct {
        const char *name, *help;
        int cell;
    } wc[] = {
        {"luaproxy_connections_accepted_total", "Client connections accepted.", LP_WM_ACCEPTED},
        {"luaproxy_tls_handshakes_total", "TLS handshakes completed with clients.",
         LP_WM_TLS_HANDSHAKES},
        {"luaproxy_tls_resumptions_total", "Client TLS handshakes that resumed a session.",
         LP_WM_TLS_RESUMED},
    };
    for (size_t j = 0; j < LP_ARRAY_LEN(wc); j++) {
        uint64_t v = 0;
        for (unsigned w = 0; w < s->nworkers; w++)
            v += LP_M_GET(&s->workers[w].m_cells[wc[j].cell]);
        lp_mtext_family(t, wc[j].name, "counter", wc[j].help);
        lp_mtext_sample(t, wc[j].name, "", NULL, 0, (double)v);
    }
    lp_mtext_family(t, "luaproxy_lua_memory_bytes", "gauge",
                    "Memory of the worker's Lua VMs (sampled once a second).");
    for (unsigned w = 0; w < s->nworkers && cfg->has_lua; w++) {
        char id[16];
        snprintf(id, sizeof(id), "%d", s->workers[w].id);
        const char *l[] = {"worker", id};
        lp_mtext_sample(t, "luaproxy_lua_memory_bytes", "", l, 1,
                        (double)LP_M_GET(&s->workers[w].m_cells[LP_WM_LUA_MEM]));
    }
    uint64_t lua[3];
    lp_workers_lua_stats(s->workers, s->nworkers, lua);
    lp_mtext_family(t, "luaproxy_lua_timers_pending", "gauge",
                    "Lua timers waiting for their time or a running slot.");
    lp_mtext_sample(t, "luaproxy_lua_timers_pending", "", NULL, 0, (double)lua[0]);
    lp_mtext_family(t, "luaproxy_lua_timers_running", "gauge",
                    "Lua timers and spawned threads running.");
    lp_mtext_sample(t, "luaproxy_lua_timers_running", "", NULL, 0, (double)lua[1]);
    static const char *const dict_names[] = {"luaproxy_shared_dict_used_bytes",
                                             "luaproxy_shared_dict_capacity_bytes",
                                             "luaproxy_shared_dict_evictions_total"};
    static const char *const dict_help[] = {"Bytes used in the shared dict.",
                                            "Capacity of the shared dict.",
                                            "Keys evicted to make room in the shared dict."};
    for (int j = 0; j < 3; j++) {
        lp_mtext_family(t, dict_names[j], j == 2 ? "counter" : "gauge", dict_help[j]);
        for (size_t i = 0; i < cfg->nshdicts; i++) {
            lp_shdict_stats_t st;
            lp_shdict_stats(cfg->shdicts[i], &st);
            const char *l[] = {"dict", lp_shdict_name(cfg->shdicts[i])};
            uint64_t v = j == 0 ? st.used : j == 1 ? st.capacity : st.evictions;
            lp_mtext_sample(t, dict_names[j], "", l, 1, (double)v);
        }
    }
    cache_zones(t, cfg);
    lp_mtext_family(t, "luaproxy_reloads_total", "counter", "Reloads, by result.");
    const char *ok[] = {"result", "ok"}, *failed[] = {"result", "failed"};
    lp_mtext_sample(t, "luaproxy_reloads_total", "", ok, 1, (double)s->reloads);
    lp_mtext_sample(t, "luaproxy_reloads_total", "", failed, 1, (double)s->reloads_failed);
    lp_mtext_family(t, "luaproxy_config_generation", "gauge",
                    "Id of the config generation serving new requests.");
    lp_mtext_sample(t, "luaproxy_config_generation", "", NULL, 0, (double)lp_gen_current->id);
    lp_mtext_family(t, "luaproxy_log_lines_dropped_total", "counter",
                    "Access and error log lines dropped: the log writer fell behind its output.");
    lp_mtext_sample(t, "luaproxy_log_lines_dropped_total", "", NULL, 0,
                    (double)lp_logw_lines_dropped());
    lp_trace_counts_t tc;
    lp_trace_totals(s->workers, s->nworkers, &tc);
    lp_mtext_family(t, "luaproxy_trace_spans_total", "counter",
                    "Spans handed to the trace collector, by result.");
    const char *exported[] = {"result", "exported"}, *dropped[] = {"result", "dropped"};
    lp_mtext_sample(t, "luaproxy_trace_spans_total", "", exported, 1, (double)tc.exported);
    lp_mtext_sample(t, "luaproxy_trace_spans_total", "", dropped, 1, (double)tc.dropped);
    lp_mtext_family(t, "luaproxy_trace_spans_queued", "gauge",
                    "Spans waiting for the trace collector.");
    lp_mtext_sample(t, "luaproxy_trace_spans_queued", "", NULL, 0, (double)tc.queued);
}

char *lp_metrics_scrape(const lp_server_t *s, const lp_rtable_t *rt, int om, size_t *len)
{
    const lp_config_t *cfg = lp_gen_current->config;
    lp_mtext_t t;
    lp_mtext_init(&t, om);
    routes(&t, cfg, rt);
    upstreams(&t, cfg);
    process(&t, s, cfg);
    lp_h2_metrics(&t, s); /* #17 */
    lp_metrics_scrape_plugins(&t, s);
    lp_mtext_end(&t);
    if (t.oom) {
        lp_mtext_free(&t);
        return NULL;
    }
    *len = t.len;
    return t.buf;
}
