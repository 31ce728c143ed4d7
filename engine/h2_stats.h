/* HTTP/2 counters for GET /status and GET /metrics: the workers' LP_WM_H2_* cells
 * (metrics.h), which h2.c counts (client connections), and LP_WM_H2U_*, which h2_up.c counts
 * (connections to h2 upstreams). Main thread; relaxed reads of the workers' cells. */
#ifndef LP_H2_STATS_H
#define LP_H2_STATS_H

#include <jansson.h>
#include "metrics.h"
#include "server.h"

/* The `http2` object of GET /status (docs/admin-api.md); NULL when out of memory. */
json_t *lp_h2_status(const lp_server_t *s);
/* The luaproxy_h2_* families (docs/metrics.md) into t. */
void lp_h2_metrics(lp_mtext_t *t, const lp_server_t *s);

#endif
