/* Active health checks, on the main loop: one probe per target of every upstream with
 * `health.active` in the current generation. A probe connects (and for http sends
 * `GET path` and reads the status line) every interval, with jitter so targets are not
 * probed in lockstep, and flips the shared state after `healthy`/`unhealthy` results in a
 * row. Reloads replace the probes. */
#include <stdio.h>
#include <stdlib.h>
#include "health.h"
#include "log.h"
#include "server.h"
#include "worker.h"

typedef struct lp_probe_s {
    uv_timer_t timer;   /* next probe */
    uv_timer_t timeout; /* this probe's deadline */
    uv_tcp_t tcp;
    uv_connect_t creq;
    uv_write_t wreq;
    lp_health_t *h;
    const lp_health_conf_t *hc; /* in the generation that made the probe (kept alive below) */
    lp_addr_t addr;
    char req[512];
    char buf[256];
    size_t len;
    int tcp_open; /* tcp initialized and not closed */
    int handles;  /* open handles; freed at 0 once stopping */
    int stopping;
    struct lp_probe_s *next;
} lp_probe_t;

struct lp_checker_s {
    lp_probe_t *probes;
    lp_gen_t *gen; /* the generation whose config the probes read: holds a reference */
};

static struct lp_checker_s checker;
static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t jitter(uint64_t ms)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    uint64_t spread = ms / 5 + 1; /* +-10% */
    return ms - ms / 10 + rng % spread;
}

static void on_probe_handle_close(uv_handle_t *hd)
{
    lp_probe_t *p = hd->data;
    if (--p->handles == 0 && p->stopping)
        free(p);
}

static void on_probe_timer(uv_timer_t *t);

static void probe_done(lp_probe_t *p, int ok, const char *why)
{
    uv_timer_stop(&p->timeout);
    if (p->tcp_open) {
        p->tcp_open = 0;
        uv_close((uv_handle_t *)&p->tcp, on_probe_handle_close);
    }
    lp_health_t *h = p->h;
    const lp_health_conf_t *hc = p->hc;
    if (ok) {
        h->check_fail = 0;
        h->check_ok++;
        if (__atomic_load_n(&h->down, __ATOMIC_RELAXED) && h->check_ok >= hc->healthy) {
            __atomic_store_n(&h->down, 0, __ATOMIC_RELAXED);
            lp_log_notice("upstream %s: healthy (active check)", h->addr);
        }
        /* A passing check also ends a passive ejection. */
        if (__atomic_load_n(&h->ejected_until, __ATOMIC_RELAXED)) {
            __atomic_store_n(&h->ejected_until, 0, __ATOMIC_RELAXED);
            __atomic_store_n(&h->ejections, 0, __ATOMIC_RELAXED);
        }
    } else {
        h->check_ok = 0;
        h->check_fail++;
        if (!__atomic_load_n(&h->down, __ATOMIC_RELAXED) && h->check_fail >= hc->unhealthy) {
            __atomic_store_n(&h->down, 1, __ATOMIC_RELAXED);
            lp_log_warn("upstream %s: unhealthy (active check: %s)", h->addr, why);
        }
    }
    if (!p->stopping)
        uv_timer_start(&p->timer, on_probe_timer, jitter(hc->interval), 0);
}

static void on_probe_timeout(uv_timer_t *t)
{
    probe_done(t->data, 0, "timed out");
}

static void on_probe_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
    lp_probe_t *p = hd->data;
    *buf = uv_buf_init(p->buf + p->len, (unsigned)(sizeof(p->buf) - 1 - p->len));
}

static void on_probe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    lp_probe_t *p = s->data;
    if (nread < 0) {
        probe_done(p, 0, "closed before a status line");
        return;
    }
    p->len += (size_t)nread;
    p->buf[p->len] = 0;
    char *eol = strstr(p->buf, "\r\n");
    if (!eol && p->len < sizeof(p->buf) - 1)
        return;
    int status = 0;
    if (sscanf(p->buf, "HTTP/1.%*d %3d", &status) != 1) {
        probe_done(p, 0, "not an HTTP response");
        return;
    }
    char why[64];
    snprintf(why, sizeof(why), "status %d", status);
    probe_done(p, lp_status_in(&p->hc->active_statuses, status), why);
}

static void on_probe_written(uv_write_t *w, int status)
{
    lp_probe_t *p = w->data;
    if (status < 0 && p->tcp_open)
        probe_done(p, 0, uv_strerror(status));
}

static void on_probe_connect(uv_connect_t *c, int status)
{
    lp_probe_t *p = c->data;
    if (!p->tcp_open)
        return; /* timed out meanwhile */
    if (status < 0) {
        probe_done(p, 0, uv_strerror(status));
        return;
    }
    if (!p->hc->active_http) {
        probe_done(p, 1, "");
        return;
    }
    uv_buf_t b = uv_buf_init(p->req, (unsigned)strlen(p->req));
    p->wreq.data = p;
    if (uv_write(&p->wreq, (uv_stream_t *)&p->tcp, &b, 1, on_probe_written) ||
        uv_read_start((uv_stream_t *)&p->tcp, on_probe_alloc, on_probe_read))
        probe_done(p, 0, "cannot send the check");
}

static void on_probe_timer(uv_timer_t *t)
{
    lp_probe_t *p = t->data;
    if (p->stopping || p->tcp_open)
        return;
    p->len = 0;
    uv_tcp_init(t->loop, &p->tcp);
    p->tcp.data = p;
    p->tcp_open = 1;
    p->handles++;
    p->creq.data = p;
    if (uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&p->addr.addr,
                       on_probe_connect)) {
        probe_done(p, 0, "connect failed");
        return;
    }
    uv_timer_start(&p->timeout, on_probe_timeout, p->hc->timeout, 0);
}

static void probes_stop(void)
{
    lp_probe_t *p = checker.probes;
    checker.probes = NULL;
    while (p) {
        lp_probe_t *next = p->next;
        p->stopping = 1;
        uv_timer_stop(&p->timeout);
        if (p->tcp_open) {
            p->tcp_open = 0;
            uv_close((uv_handle_t *)&p->tcp, on_probe_handle_close);
        }
        uv_close((uv_handle_t *)&p->timer, on_probe_handle_close);
        uv_close((uv_handle_t *)&p->timeout, on_probe_handle_close);
        p = next;
    }
    if (checker.gen && __atomic_sub_fetch(&checker.gen->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        lp_config_free(checker.gen->config);
        free(checker.gen);
    }
    checker.gen = NULL;
}

static int actively_checked(const lp_config_t *cfg, const char *addr)
{
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        for (size_t j = 0; cfg->upstreams[i].health.active && j < cfg->upstreams[i].ntargets; j++) {
            size_t na;
            const lp_addr_t *a = lp_target_addrs(&cfg->upstreams[i].targets[j], &na);
            for (size_t k = 0; k < na; k++)
                if (strcmp(a[k].text, addr) == 0)
                    return 1;
        }
    }
    return 0;
}

void lp_health_checks_update(lp_server_t *s)
{
    probes_stop();
    lp_gen_t *gen = lp_gen_current;
    const lp_config_t *cfg = gen->config;
    int any = 0;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const lp_upstream_conf_t *uc = &cfg->upstreams[i];
        if (!uc->health.active) {
            /* No checks any more: a verdict of an earlier generation's checks must not
             * keep a target down for good (unless another upstream still checks it). */
            for (size_t j = 0; j < uc->ntargets; j++) {
                size_t na;
                const lp_addr_t *a = lp_target_addrs(&uc->targets[j], &na);
                for (size_t k = 0; k < na; k++) {
                    lp_health_t *h = lp_health_get(a[k].text);
                    if (h && !actively_checked(cfg, a[k].text)) {
                        __atomic_store_n(&h->down, 0, __ATOMIC_RELAXED);
                        h->check_ok = h->check_fail = 0;
                    }
                }
            }
            continue;
        }
        for (size_t j = 0; j < uc->ntargets; j++) {
            /* A DNS target: its addresses as resolved when the config was loaded. */
            size_t na;
            const lp_addr_t *a = lp_target_addrs(&uc->targets[j], &na);
            for (size_t k = 0; k < na; k++) {
                lp_probe_t *p = calloc(1, sizeof(*p));
                if (!p)
                    continue;
                p->h = lp_health_get(a[k].text);
                p->hc = &uc->health;
                p->addr = a[k];
                snprintf(p->req, sizeof(p->req),
                         "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: luaproxy-health/%s\r\n"
                         "Connection: close\r\n\r\n",
                         uc->health.path, uc->targets[j].addr.text, LP_VERSION);
                uv_timer_init(s->loop, &p->timer);
                uv_timer_init(s->loop, &p->timeout);
                p->timer.data = p->timeout.data = p;
                p->handles = 2;
                /* The first probe soon, spread over the interval. */
                uv_timer_start(&p->timer, on_probe_timer, jitter(uc->health.interval) % 1000 + 1,
                               0);
                p->next = checker.probes;
                checker.probes = p;
                any = 1;
            }
        }
    }
    if (any) {
        /* The probes read the generation's config: keep it alive while they run. */
        __atomic_add_fetch(&gen->refs, 1, __ATOMIC_ACQ_REL);
        checker.gen = gen;
    }
}

void lp_health_checks_stop(lp_server_t *s)
{
    LP_UNUSED(s);
    probes_stop();
}
