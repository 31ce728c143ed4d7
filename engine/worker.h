/* Worker threads: each owns a loop, its listeners (SO_REUSEPORT), connections and pools. */
#ifndef LP_WORKER_H
#define LP_WORKER_H

#include "proxy-t.h"

/* Starts n workers on config; blocks until each is listening or failed. */
int lp_workers_start(const lp_config_t *config, unsigned n, lp_worker_t **out, char *err,
                     size_t errlen);
/* Asks every worker to drain and stop, and joins them. */
void lp_workers_stop(lp_worker_t *workers, unsigned n);

/* Opens a listening socket with SO_REUSEPORT (so every worker binds the same port). */
int lp_listener_open(uv_loop_t *loop, uv_tcp_t *tcp, const lp_listen_conf_t *lc, char *err,
                     size_t errlen);

#endif
