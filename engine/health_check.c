/* Active health checks, on the main loop: one probe per target of every upstream with
 * `health.active` in the current generation. A probe connects every interval, with jitter
 * so targets are not probed in lockstep, and flips the shared state after
 * `healthy`/`unhealthy` results in a row. Reloads replace the probes.
 *
 * This file keeps the policy (when to probe, what counts as a pass, the thresholds). The
 * connection is the proxy path's: an endpoint (endpoint.c: socket, read blocks, write
 * batches, deadline in a heap, TLS pump), the TLS client start and handshake of every
 * upstream connection (lp_ep_tls_connect/lp_ep_tls_handshake: the upstream's client
 * context, so the same verification, SNI and session resumption), and the engine's
 * response parser (http1.c), so a status line split across reads or records, an interim
 * 1xx, or a malformed head are judged as the proxy would judge them. The endpoints run on
 * the main loop with an environment of their own (checker.env), not a worker's: probes are
 * the main thread's, like the admin API. The probe ends at the response head. */
#include <stdio.h>
#include <stdlib.h>
#include "buf.h"
#include "endpoint.h"
#include "health.h"
#include "http1.h"
#include "log.h"
#include "server.h"
#include "tls.h"
#include "worker.h"

/* Response header fields a probe accepts: one small block of them. */
#define PROBE_MAX_HEADERS (LP_BUF_SMALL / sizeof(lp_header_t))

/* What a probe connection's timer times (after the endpoint's own modes). */
enum { PM_DEADLINE = LP_EP_TM_OWNER };

typedef struct lp_probe_s lp_probe_t;

/* One probe's connection, from its connect to its close callback. Apart from the probe
 * (the policy, which lives across connections) because an endpoint frees itself only in
 * its close callback, and a reload may drop the probe before that runs. */
typedef struct {
    lp_endpoint_t ep;  /* the socket, in checker.env; freed with it (ops->closed) */
    uv_connect_t creq; /* creq.data = this */
    lp_probe_t *probe; /* borrowed: the probe it reports to; NULL once it gave its verdict */
    lp_buf_t *arena;   /* owned: the parser's arena (small, grows: probe_grow) */
    lp_buf_t *fields;  /* owned: the parser's header array */
    lp_h1_t h1;        /* the response parser */
    int handshaking;   /* TLS handshake not finished */
} lp_probe_conn_t;

struct lp_probe_s {
    uv_timer_t timer;           /* next probe; the probe is freed in its close callback */
    lp_probe_conn_t *pc;        /* borrowed (it frees itself): the probe in flight, NULL: none */
    lp_health_t *h;             /* borrowed: the process-wide registry's (health.h) */
    const lp_health_conf_t *hc; /* in the generation that made the probe (kept alive below) */
    lp_tls_client_t *tls_ctx;   /* borrowed from that generation's upstream; NULL: plain */
    char *tls_name;             /* owned: the name TLS sends and verifies (NULL: plain) */
    void *session;              /* owned: the TLS session to resume (lp_tls_session_free) */
    lp_addr_t addr;             /* borrowed text: the generation's */
    char *req;                  /* owned: the request head an http probe sends */
    size_t reqlen;
    int stopping;            /* dropped by a reload or the stop: no verdict, no next probe */
    struct lp_probe_s *next; /* the checker's list (checker.probes owns them) */
};

struct lp_checker_s {
    lp_probe_t *probes;   /* owned list: the current generation's */
    lp_gen_t *gen;        /* the generation whose config the probes read: holds a reference */
    lp_ep_env_t env;      /* the probes' endpoints: the main loop, a deadline heap, the pools */
    lp_bufpool_t bufs;    /* read and TLS blocks, parser arenas (main thread only) */
    lp_wbpool_t wbatches; /* write batches (main thread only) */
    int env_ready;        /* env is set up (the first update); its heap closes at the stop */
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

static void probe_free(lp_probe_t *p)
{
    lp_tls_session_free(p->session);
    free(p->tls_name);
    free(p->req);
    free(p);
}

static void on_probe_timer_close(uv_handle_t *hd)
{
    probe_free(hd->data);
}

static void on_probe_timer(uv_timer_t *t);

/* Ends the probe in flight: its connection closes and reports no more. 0 when none was in
 * flight. */
static int probe_end(lp_probe_t *p)
{
    lp_probe_conn_t *pc = p->pc;
    if (!pc)
        return 0;
    p->pc = NULL;
    pc->probe = NULL;
    if (pc->arena) {
        lp_buf_unref(pc->arena);
        pc->arena = NULL;
    }
    if (pc->fields) {
        lp_buf_unref(pc->fields);
        pc->fields = NULL;
    }
    lp_ep_close(&pc->ep); /* its buffers, TLS and deadline go; the memory in ops->closed */
    return 1;
}

/* Ends the probe in flight (no-op when none) and counts its verdict. */
static void probe_done(lp_probe_t *p, int ok, const char *why)
{
    if (!probe_end(p))
        return;
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

static lp_probe_conn_t *pc_of(lp_endpoint_t *ep)
{
    return LP_CONTAINER_OF(ep, lp_probe_conn_t, ep);
}

/* The verdict of pc's probe, when it still has one to give. */
static void pc_done(lp_probe_conn_t *pc, int ok, const char *why)
{
    if (pc->probe)
        probe_done(pc->probe, ok, why);
}

static void pc_tls_failed(lp_probe_conn_t *pc, const char *reason)
{
    char why[200];
    snprintf(why, sizeof(why), "TLS handshake failed: %s", reason);
    pc_done(pc, 0, why);
}

/* ---- the request ---- */

/* Once connected (and after the TLS handshake): the request head goes out in a block of
 * its own, so no write in flight points into the probe (a reload may free it first). */
static void pc_send_request(lp_probe_conn_t *pc)
{
    lp_probe_t *p = pc->probe;
    pc->ep.flags |= LP_EPF_WRITABLE;
    lp_buf_t *b = lp_buf_get(&checker.bufs, p->reqlen);
    lp_wbatch_t *wb = b ? lp_ep_outb(&pc->ep, 1, 0) : NULL;
    if (!wb) {
        if (b)
            lp_buf_unref(b);
        pc_done(pc, 0, "out of memory");
        return;
    }
    memcpy(b->data, p->req, p->reqlen);
    lp_wbatch_add(wb, b->data, p->reqlen, b);
    lp_buf_unref(b);      /* the batch holds it */
    lp_ep_flush(&pc->ep); /* a failure comes back through pc_on_timeout(LP_EP_TM_BROKEN) */
}

/* ---- the response ---- */

/* Response bytes in the read block (plain, or decrypted): the verdict comes with the head. */
static void pc_parse(lp_probe_conn_t *pc)
{
    lp_endpoint_t *ep = &pc->ep;
    while (pc->probe && ep->rbuf && ep->rpos < ep->rlen) {
        size_t used = 0;
        lp_h1_event_t ev =
            lp_h1_execute(&pc->h1, ep->rbuf->data + ep->rpos, ep->rlen - ep->rpos, &used);
        ep->rpos += (uint32_t)used;
        if (ev == LP_H1_HEAD || ev == LP_H1_DONE || ev == LP_H1_UPGRADE) {
            int status = lp_h1_status(&pc->h1);
            char why[64];
            snprintf(why, sizeof(why), "status %d", status);
            pc_done(pc, lp_status_in(&pc->probe->hc->active_statuses, status), why);
        } else if (ev == LP_H1_ERROR) {
            char why[160];
            snprintf(why, sizeof(why), "invalid response: %s",
                     pc->h1.err_reason ? pc->h1.err_reason : "parse error");
            pc_done(pc, 0, why);
        } else {
            break; /* NEED_MORE (all used); PAUSED never comes: probe_body takes all */
        }
    }
    if (pc->probe)
        lp_ep_release_rbuf(ep); /* the parser copied the head: hold no block while waiting */
}

static int probe_body(lp_h1_t *h, const char *at, size_t len)
{
    LP_UNUSED(h);
    LP_UNUSED(at);
    LP_UNUSED(len);
    return 0; /* interim responses only: the probe ends at the final head */
}

/* A head beyond the small arena: one large block (max_header_size is capped below it). */
static int probe_grow(lp_h1_t *h, size_t need)
{
    lp_probe_conn_t *pc = h->ud;
    if (need > LP_BUF_SIZE || pc->arena->cap >= LP_BUF_SIZE)
        return -1;
    lp_buf_t *nb = lp_buf_get(&checker.bufs, LP_BUF_SIZE);
    if (!nb)
        return -1;
    lp_h1_rebase(h, nb->data, nb->cap);
    lp_buf_unref(pc->arena);
    pc->arena = nb;
    return 0;
}

/* TLS: decrypts what the session holds into the read block and parses it. */
static void pc_tls_pump(lp_probe_conn_t *pc)
{
    while (pc->probe) {
        int err;
        int rc = lp_ep_tls_fill(&pc->ep, &err);
        if (rc == 0)
            break;
        if (rc < 0) {
            pc_done(pc, 0, err ? lp_tls_error(pc->ep.tls) : "closed before the response head");
            return;
        }
        pc_parse(pc);
    }
    if (pc->probe && !lp_ep_flush_tls(&pc->ep)) {
        lp_tls_in_trim(pc->ep.tls);
        lp_ep_reading(&pc->ep, 1); /* again, if a full TLS input block had stopped it */
    }
}

static void pc_on_input(lp_endpoint_t *ep, ssize_t nread)
{
    lp_probe_conn_t *pc = pc_of(ep);
    if (!pc->probe)
        return;
    if (nread > 0) {
        if (!ep->tls) {
            pc_parse(pc);
            return;
        }
        if (pc->handshaking) {
            int rc = lp_ep_tls_handshake(ep);
            if (rc == LP_AGAIN)
                return;
            if (rc == LP_ERROR) {
                pc_tls_failed(pc, lp_tls_error(ep->tls));
                return;
            }
            pc->handshaking = 0;
            pc_send_request(pc);
        }
        pc_tls_pump(pc);
        return;
    }
    if (ep->tls && nread == UV_EOF && !pc->handshaking) {
        /* What TLS still holds comes first. */
        lp_tls_in_eof(ep->tls);
        pc_tls_pump(pc);
    }
    if (pc->handshaking)
        pc_tls_failed(pc, nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
    else
        pc_done(pc, 0,
                nread == UV_EOF ? "closed before the response head" : uv_strerror((int)nread));
}

static void pc_on_written(lp_endpoint_t *ep, int status)
{
    if (status < 0)
        pc_done(pc_of(ep), 0, uv_strerror(status));
}

static void pc_on_timeout(lp_endpoint_t *ep, int mode)
{
    lp_probe_conn_t *pc = pc_of(ep);
    if (mode == LP_EP_TM_BROKEN && pc->handshaking)
        pc_tls_failed(pc, "the connection broke");
    else if (mode == LP_EP_TM_BROKEN)
        pc_done(pc, 0, "the connection broke sending the request");
    else
        pc_done(pc, 0, pc->handshaking ? "timed out in the TLS handshake" : "timed out");
}

static void pc_on_closed(lp_endpoint_t *ep)
{
    free(pc_of(ep));
}

static const lp_endpoint_ops_t probe_ops = {
    .input = pc_on_input,
    .written = pc_on_written,
    .timeout = pc_on_timeout,
    .closed = pc_on_closed,
};

/* ---- a probe ---- */

static void on_probe_connect(uv_connect_t *c, int status)
{
    lp_probe_conn_t *pc = c->data;
    if (!pc->probe || (pc->ep.flags & LP_EPF_CLOSING))
        return; /* timed out or dropped meanwhile */
    lp_probe_t *p = pc->probe;
    if (status < 0) {
        pc_done(pc, 0, uv_strerror(status));
        return;
    }
    if (!p->hc->active_http) {
        pc_done(pc, 1, "");
        return;
    }
    uv_tcp_nodelay(&pc->ep.tcp, 1);
    /* The response parser, with the proxy path's limits (as upstream.c sets them). */
    const lp_limits_t *lim = &checker.gen->config->limits;
    unsigned nh = lim->max_headers && lim->max_headers < PROBE_MAX_HEADERS
                      ? lim->max_headers
                      : (unsigned)PROBE_MAX_HEADERS;
    pc->arena = lp_buf_get(&checker.bufs, LP_BUF_SMALL);
    pc->fields = lp_buf_get(&checker.bufs, LP_BUF_SMALL);
    if (!pc->arena || !pc->fields) {
        pc_done(pc, 0, "out of memory");
        return;
    }
    lp_h1_init(&pc->h1, HTTP_RESPONSE, pc, probe_body);
    pc->h1.max_header_size = lim->max_header_size;
    if (pc->h1.max_header_size > LP_BUF_SIZE - 1024)
        pc->h1.max_header_size = LP_BUF_SIZE - 1024;
    pc->h1.grow = probe_grow;
    lp_h1_set_storage(&pc->h1, pc->arena->data, pc->arena->cap,
                      (lp_header_t *)(void *)pc->fields->data, nh);
    lp_ep_reading(&pc->ep, 1);
    if (!p->tls_ctx) {
        pc_send_request(pc);
        return;
    }
    /* The deadline keeps running through the handshake. */
    pc->handshaking = 1;
    int rc = lp_ep_tls_connect(&pc->ep, p->tls_ctx, p->tls_name, &p->session);
    if (rc == LP_ENOMEM)
        pc_done(pc, 0, "cannot start TLS");
    else if (rc == LP_ERROR)
        pc_tls_failed(pc, lp_tls_error(pc->ep.tls));
}

static void on_probe_timer(uv_timer_t *t)
{
    lp_probe_t *p = t->data;
    if (p->stopping || p->pc)
        return;
    lp_probe_conn_t *pc = calloc(1, sizeof(*pc));
    if (!pc) {
        uv_timer_start(&p->timer, on_probe_timer, jitter(p->hc->interval), 0);
        return;
    }
    lp_ep_init(&pc->ep, &checker.env, &probe_ops);
    pc->probe = p;
    p->pc = pc;
    pc->creq.data = pc;
    lp_ep_timer(&pc->ep, PM_DEADLINE, p->hc->timeout);
    int rc = uv_tcp_connect(&pc->creq, &pc->ep.tcp, (const struct sockaddr *)&p->addr.addr,
                            on_probe_connect);
    if (rc)
        probe_done(p, 0, uv_strerror(rc));
}

static void probes_stop(void)
{
    lp_probe_t *p = checker.probes;
    checker.probes = NULL;
    while (p) {
        lp_probe_t *next = p->next;
        p->stopping = 1;
        probe_end(p); /* no verdict: a reload is not the target's fault */
        uv_close((uv_handle_t *)&p->timer, on_probe_timer_close);
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
    if (!checker.env_ready) {
        lp_bufpool_init(&checker.bufs, 8);
        lp_ep_env_init(&checker.env, s->loop, &checker.bufs, &checker.wbatches);
        checker.env_ready = 1;
    }
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
                p->tls_ctx = uc->tls;
                int n = asprintf(&p->req,
                                 "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: luaproxy-health/%s"
                                 "\r\nConnection: close\r\n\r\n",
                                 uc->health.path, uc->targets[j].addr.text, LP_VERSION);
                if (n < 0) {
                    p->req = NULL;
                    probe_free(p);
                    continue;
                }
                p->reqlen = (size_t)n;
                /* The name the proxy path sends and verifies for this address. */
                if (uc->tls &&
                    !(p->tls_name = lp_tls_peer_name(uc->tls, a[k].text, uc->targets[j].host))) {
                    probe_free(p);
                    continue;
                }
                uv_timer_init(s->loop, &p->timer);
                p->timer.data = p;
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
    if (checker.env_ready) {
        /* Every probe connection closed above left the heap; the loop's last run closes
         * the timer and the connections. */
        lp_ep_timers_close(&checker.env.timers); /* for good: the process is stopping */
    }
}
