/* proxy.metrics: plugins' own metrics (docs/metrics.md). */
#include "metrics_scrape.h"

void lp_metrics_scrape_plugins(lp_mtext_t *t, const lp_server_t *s)
{
    LP_UNUSED(t);
    LP_UNUSED(s);
}
