#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "health.h"
#include "log.h"

/* The registry: every address ever named, for the life of the process. */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static lp_health_t *registry;

uint64_t lp_health_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

lp_health_t *lp_health_get(const char *addr)
{
    pthread_mutex_lock(&registry_lock);
    lp_health_t *h;
    for (h = registry; h; h = h->next)
        if (strcmp(h->addr, addr) == 0)
            break;
    if (!h && (h = calloc(1, sizeof(*h)))) {
        h->addr = strdup(addr);
        if (!h->addr) {
            free(h);
            h = NULL;
        } else {
            h->next = registry;
            registry = h;
        }
    }
    pthread_mutex_unlock(&registry_lock);
    return h;
}

int lp_health_available(lp_health_t *h, uint64_t now_ms)
{
    if (__atomic_load_n(&h->admin_state, __ATOMIC_RELAXED) != LP_TARGET_ENABLED)
        return 0;
    if (__atomic_load_n(&h->down, __ATOMIC_RELAXED))
        return 0;
    uint64_t until = __atomic_load_n(&h->ejected_until, __ATOMIC_RELAXED);
    return !until || now_ms >= until;
}

int lp_health_ejected_only(lp_health_t *h, uint64_t now_ms)
{
    if (__atomic_load_n(&h->admin_state, __ATOMIC_RELAXED) != LP_TARGET_ENABLED)
        return 0;
    if (__atomic_load_n(&h->down, __ATOMIC_RELAXED))
        return 0;
    uint64_t until = __atomic_load_n(&h->ejected_until, __ATOMIC_RELAXED);
    return until && now_ms < until;
}

int lp_health_report(lp_health_t *h, const lp_health_conf_t *hc, int failed, uint64_t now_ms)
{
    if (!failed) {
        __atomic_add_fetch(&h->successes, 1, __ATOMIC_RELAXED);
        __atomic_store_n(&h->consecutive_failures, 0, __ATOMIC_RELAXED);
        if (__atomic_load_n(&h->ejected_until, __ATOMIC_RELAXED)) {
            __atomic_store_n(&h->ejected_until, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&h->ejections, 0, __ATOMIC_RELAXED);
            lp_log_notice("upstream %s: back (a request succeeded)", h->addr);
        }
        return 0;
    }
    __atomic_add_fetch(&h->failures, 1, __ATOMIC_RELAXED);
    unsigned n = __atomic_add_fetch(&h->consecutive_failures, 1, __ATOMIC_RELAXED);
    if (!hc->passive_failures || n < hc->passive_failures)
        return 0;
    /* Eject for a back-off that doubles on every repeat (up to 32 times the base). Several
     * workers may cross the threshold at once: the last write wins, which is harmless. */
    __atomic_store_n(&h->consecutive_failures, 0, __ATOMIC_RELAXED);
    unsigned k = __atomic_add_fetch(&h->ejections, 1, __ATOMIC_RELAXED);
    uint64_t backoff = hc->ejection << (k - 1 < 5 ? k - 1 : 5);
    __atomic_store_n(&h->ejected_until, now_ms + backoff, __ATOMIC_RELAXED);
    lp_log_warn("upstream %s: ejected for %.1f s after %u consecutive failures", h->addr,
                (double)backoff / 1000.0, n);
    return 1;
}

const char *lp_health_state(lp_health_t *h, uint64_t now_ms)
{
    int a = __atomic_load_n(&h->admin_state, __ATOMIC_RELAXED);
    if (a == LP_TARGET_DISABLED)
        return "disabled";
    if (a == LP_TARGET_DRAINED)
        return "drained";
    if (__atomic_load_n(&h->down, __ATOMIC_RELAXED))
        return "down";
    uint64_t until = __atomic_load_n(&h->ejected_until, __ATOMIC_RELAXED);
    if (until && now_ms < until)
        return "ejected";
    return "up";
}
