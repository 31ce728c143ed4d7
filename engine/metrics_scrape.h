/* GET /metrics (metrics_scrape.c). Main thread. */
#ifndef LP_METRICS_SCRAPE_H
#define LP_METRICS_SCRAPE_H

#include "metrics.h"
#include "server.h"

/* The exposition of every metric (OpenMetrics when om), malloc'd, *len its length; NULL
 * when out of memory. */
char *lp_metrics_scrape(const lp_server_t *s, int om, size_t *len);
/* The plugins' own metrics (proxy.metrics, metrics_lua.c) into t. */
void lp_metrics_scrape_plugins(lp_mtext_t *t, const lp_server_t *s);

#endif
