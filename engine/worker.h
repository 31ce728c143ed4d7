/* Worker threads: each owns a loop, its listeners (SO_REUSEPORT), connections, pools and
 * its side of every live config generation. The main thread builds generations (config,
 * every worker's Lua VM, access log, sockets for new listen addresses) and hands them over:
 * every worker prepares its part, then all commit, or all drop it. */
#ifndef LP_WORKER_H
#define LP_WORKER_H

#include "proxy-t.h"

/* The generation the main thread last installed (main thread only). */
extern lp_gen_t *lp_gen_current;

/* Starts `nworkers` workers (0: the config's count) on the loaded config `cfg`, which the
 * first generation owns from here (freed on failure). */
int lp_workers_start(lp_config_t *cfg, unsigned nworkers, lp_worker_t **out, char *err,
                     size_t errlen);
/* What a start would do with `cfg` short of serving (`luaproxy -t`): a throwaway worker VM
 * with the plugins and handlers loaded and init_worker run. 0 or LP_ECONFIG with err. */
int lp_workers_check(const lp_config_t *cfg, char *err, size_t errlen);
/* Builds a new generation from `cfg` (loaded and materialised: lp_config_materialise; the
 * generation owns it from here, freed on failure) and switches every worker to it (prepare
 * everywhere, then commit everywhere); requests in flight finish on theirs. On error
 * nothing changed (every worker keeps the current generation) and err says why. Main
 * thread. */
int lp_workers_reload(lp_worker_t *ws, unsigned n, lp_config_t *cfg, char *err, size_t errlen);
/* Reopens the current generation's access log in every worker (SIGUSR1: logrotate). On
 * error the workers keep the files they have. Main thread. */
int lp_workers_reopen_logs(lp_worker_t *ws, unsigned n, char *err, size_t errlen);
/* Hands route table t (a reference each is taken) to every worker for new requests of the
 * current generation (POST /routes); returns once all have it. Main thread. */
struct lp_rtable_s;
void lp_workers_set_routes(lp_worker_t *ws, unsigned n, struct lp_rtable_s *t);
/* Asks every worker to drain and stop, and joins them. */
void lp_workers_stop(lp_worker_t *workers, unsigned n);
/* Open client connections and requests served, summed over workers (relaxed reads). */
void lp_workers_stats(const lp_worker_t *ws, unsigned n, uint64_t *conns, uint64_t *requests);
/* Lua timers pending, background tasks running, and timers or spawns refused by the
 * bounds, summed over workers (relaxed reads). */
void lp_workers_lua_stats(const lp_worker_t *ws, unsigned n, uint64_t out[3]);

/* 0 when nothing listens on the address yet (a bind without SO_REUSEPORT succeeds). */
int lp_listen_probe(const lp_listen_conf_t *lc, char *err, size_t errlen);
/* A listening socket for lc bound to sa with SO_REUSEPORT; -1 with err set. */
int lp_listen_socket(const lp_listen_conf_t *lc, const struct sockaddr *sa, socklen_t salen,
                     char *err, size_t errlen);
/* "127.0.0.1:8080" or "[::1]:8080". */
void lp_sockaddr_text(const struct sockaddr_storage *ss, char *out, size_t outlen);
/* Drops a reference to a worker generation (requests and the worker hold them). */
void lp_wgen_release(lp_worker_t *w, lp_wgen_t *g);

/* The wall clock (lp_ffi_now's seconds since the epoch) at a monotonic stamp of this process
 * (uv_hrtime()'s ns, or uv_now()'s ms times 1e6), as w's offset puts it: the engine's own
 * timestamps (the cache's request and response times) without a clock read each. */
static inline double lp_worker_wall(const lp_worker_t *w, uint64_t mono_ns)
{
    return (double)(int64_t)mono_ns * 1e-9 + w->wall_offset;
}
/* Reads both clocks into w->wall_offset. */
void lp_worker_wall_sync(lp_worker_t *w);

#endif
