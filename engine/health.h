/* Upstream target health, shared by every worker and the main thread's active checker.
 *
 * Shared state: one lp_health_t per target address for the life of the process (the
 * registry is guarded by a mutex, taken only when a generation is built and by the admin
 * API). The fields marked atomic are read by workers on every pick and written by workers
 * (passive reports), the checker (active results) and the admin API (drain/disable). */
#ifndef LP_HEALTH_H
#define LP_HEALTH_H

#include <stdint.h>
#include "config.h"

typedef enum {
    LP_TARGET_ENABLED = 0,
    LP_TARGET_DRAINED = 1,
    LP_TARGET_DISABLED = 2
} lp_admin_state_t;

typedef struct lp_health_s {
    char *addr;                    /* owned: "host:port", the registry key */
    int down;                      /* atomic: the active check says unhealthy */
    int admin_state;               /* atomic: lp_admin_state_t */
    unsigned consecutive_failures; /* atomic: passive, reset by a success */
    unsigned ejections;            /* atomic: passive ejections so far (back-off grows) */
    uint64_t ejected_until;        /* atomic: monotonic ms; 0 when not ejected */
    uint64_t failures, successes;  /* atomic: totals, for /upstreams */
    /* Active checking (main thread only). */
    unsigned check_ok, check_fail; /* consecutive results */
    struct lp_health_s *next;
} lp_health_t;

/* The health of an address (made on first use). Any thread. */
lp_health_t *lp_health_get(const char *addr);
/* Whether a worker may pick the target now. */
int lp_health_available(lp_health_t *h, uint64_t now_ms);
/* Enabled, not down by the active check, but passively ejected: the targets a pick may
 * still use when it finds none available (panic, see pick_target). */
int lp_health_ejected_only(lp_health_t *h, uint64_t now_ms);
/* Passive check: the outcome of one try (failed: connect error, reset, timeout, or a status
 * the upstream's passive.statuses names). 1 when this report ejected the target. */
int lp_health_report(lp_health_t *h, const lp_health_conf_t *hc, int failed, uint64_t now_ms);
/* "up", "down", "ejected", "drained" or "disabled". */
const char *lp_health_state(lp_health_t *h, uint64_t now_ms);
/* Monotonic milliseconds, the clock of ejections. */
uint64_t lp_health_now(void);

#endif
