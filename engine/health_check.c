/* Active health checks, on the main loop: one probe per target of every upstream with
 * `health.active` in the current generation. A probe connects every interval, with jitter
 * so targets are not probed in lockstep, and flips the shared state after
 * `healthy`/`unhealthy` results in a row. Reloads replace the probes.
 *
 * An http probe speaks to the target the way the proxy path does: through the upstream's
 * TLS client context (tls.c: the same verification, SNI and session resumption) when the
 * upstream has one, and it reads the answer with the engine's response parser (http1.c),
 * so a status line split across reads or records, an interim 1xx, or a malformed head are
 * judged as the proxy would judge them. The probe ends at the response head. */
#include <stdio.h>
#include <stdlib.h>
#include "buf.h"
#include "health.h"
#include "http1.h"
#include "log.h"
#include "server.h"
#include "tls.h"
#include "worker.h"

/* Response header fields a probe accepts: one small block of them. */
#define PROBE_MAX_HEADERS (LP_BUF_SMALL / sizeof(lp_header_t))

typedef struct lp_probe_s {
    uv_timer_t timer;   /* next probe */
    uv_timer_t timeout; /* this probe's deadline */
    uv_tcp_t tcp;
    uv_connect_t creq;
    lp_health_t *h;
    const lp_health_conf_t *hc; /* in the generation that made the probe (kept alive below) */
    lp_tls_client_t *tls_ctx;   /* borrowed from that generation's upstream; NULL: plain */
    char *tls_name;             /* owned: the name TLS sends and verifies (NULL: plain) */
    void *session;              /* owned: the TLS session to resume (lp_tls_session_free) */
    lp_addr_t addr;
    char *req; /* owned: the request head an http probe sends */
    size_t reqlen;
    /* The probe in flight. */
    lp_tls_t *tls;      /* owned */
    lp_buf_t *arena;    /* owned: the parser's arena (small, grows: probe_grow) */
    lp_buf_t *fields;   /* owned: the parser's header array */
    lp_h1_t h1;         /* the response parser */
    size_t out_pending; /* bytes queued with uv_write */
    int in_flight;      /* a probe runs: its first verdict ends it */
    int handshaking;    /* TLS handshake not finished */
    int tcp_open;       /* tcp initialized, not yet closing */
    int tcp_closing;    /* uv_close(tcp) called, its callback not yet run */
    int handles;        /* open handles; freed at 0 once stopping */
    int stopping;
    struct lp_probe_s *next;
} lp_probe_t;

struct lp_checker_s {
    lp_probe_t *probes;
    lp_gen_t *gen;        /* the generation whose config the probes read: holds a reference */
    lp_bufpool_t bufs;    /* TLS blocks and parser arenas (main thread only) */
    lp_wbpool_t wbatches; /* write batches (main thread only) */
    int pools_ready;
};

static struct lp_checker_s checker;
static uint64_t rng = 0x9e3779b97f4a7c15ull;
/* Plain input: read or decrypted here, then parsed at once (the parser copies the head). */
static char inbuf[16384];

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

static void on_probe_handle_close(uv_handle_t *hd)
{
    lp_probe_t *p = hd->data;
    if (hd == (uv_handle_t *)&p->tcp)
        p->tcp_closing = 0;
    if (--p->handles == 0 && p->stopping)
        probe_free(p);
}

static void on_probe_timer(uv_timer_t *t);

/* Ends the probe in flight: its connection goes. 0 when none was in flight. */
static int probe_end(lp_probe_t *p)
{
    if (!p->in_flight)
        return 0;
    p->in_flight = 0;
    uv_timer_stop(&p->timeout);
    lp_tls_free(p->tls);
    p->tls = NULL;
    if (p->arena) {
        lp_buf_unref(p->arena);
        p->arena = NULL;
    }
    if (p->fields) {
        lp_buf_unref(p->fields);
        p->fields = NULL;
    }
    if (p->tcp_open) {
        p->tcp_open = 0;
        p->tcp_closing = 1;
        uv_close((uv_handle_t *)&p->tcp, on_probe_handle_close);
    }
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

static void on_probe_timeout(uv_timer_t *t)
{
    lp_probe_t *p = t->data;
    probe_done(p, 0, p->handshaking ? "timed out in the TLS handshake" : "timed out");
}

/* ---- output ---- */

static void on_probe_write(uv_write_t *wr, int status)
{
    lp_wbatch_t *wb = LP_CONTAINER_OF(wr, lp_wbatch_t, req);
    lp_probe_t *p = wb->owner;
    p->out_pending -= wb->bytes;
    lp_wbatch_put(&checker.wbatches, wb);
    if (status < 0)
        probe_done(p, 0, uv_strerror(status));
}

/* -1 when the probe ended. */
static int probe_send(lp_probe_t *p, lp_wbatch_t *wb)
{
    wb->owner = p;
    int rc = lp_wbatch_send(wb, (uv_stream_t *)&p->tcp, &checker.wbatches, &p->out_pending,
                            on_probe_write);
    if (rc) {
        probe_done(p, 0, uv_strerror(rc));
        return -1;
    }
    return 0;
}

/* TLS output (handshake messages, records). -1 when the probe ended. */
static int probe_tls_send(lp_probe_t *p)
{
    lp_wbatch_t *wb;
    while (p->tls && (wb = lp_tls_out(p->tls, &checker.wbatches)))
        if (probe_send(p, wb))
            return -1;
    return 0;
}

/* The request (once connected, and after the TLS handshake). -1 when the probe ended. */
static int probe_send_request(lp_probe_t *p)
{
    lp_wbatch_t *wb = lp_wbatch_get(&checker.wbatches);
    if (!wb) {
        probe_done(p, 0, "out of memory");
        return -1;
    }
    lp_wbatch_add(wb, p->req, p->reqlen, NULL); /* p->req outlives the write */
    if (!p->tls)
        return probe_send(p, wb);
    int rc = lp_tls_write(p->tls, wb);
    lp_wbatch_put(&checker.wbatches, wb);
    if (rc) {
        probe_done(p, 0, lp_tls_error(p->tls));
        return -1;
    }
    return probe_tls_send(p);
}

/* ---- input ---- */

/* Response bytes (plain): the verdict comes with the head. */
static void probe_parse(lp_probe_t *p, const char *data, size_t len)
{
    while (p->in_flight) {
        size_t used = 0;
        lp_h1_event_t ev = lp_h1_execute(&p->h1, data, len, &used);
        data += used;
        len -= used;
        if (ev == LP_H1_HEAD || ev == LP_H1_DONE || ev == LP_H1_UPGRADE) {
            int status = lp_h1_status(&p->h1);
            char why[64];
            snprintf(why, sizeof(why), "status %d", status);
            probe_done(p, lp_status_in(&p->hc->active_statuses, status), why);
        } else if (ev == LP_H1_ERROR) {
            char why[160];
            snprintf(why, sizeof(why), "invalid response: %s",
                     p->h1.err_reason ? p->h1.err_reason : "parse error");
            probe_done(p, 0, why);
        }
        if (ev == LP_H1_NEED_MORE || !len)
            break;
    }
}

static int probe_body(lp_h1_t *h, const char *at, size_t len)
{
    return 0; /* interim responses only: the probe ends at the final head */
}

/* A head beyond the small arena: one large block (max_header_size is capped below it). */
static int probe_grow(lp_h1_t *h, size_t need)
{
    lp_probe_t *p = h->ud;
    if (need > LP_BUF_SIZE || p->arena->cap >= LP_BUF_SIZE)
        return -1;
    lp_buf_t *nb = lp_buf_get(&checker.bufs, LP_BUF_SIZE);
    if (!nb)
        return -1;
    lp_h1_rebase(h, nb->data, nb->cap);
    lp_buf_unref(p->arena);
    p->arena = nb;
    return 0;
}

/* Decrypts and parses what TLS holds. */
static void probe_tls_pump(lp_probe_t *p)
{
    while (p->in_flight && p->tls) {
        long n = lp_tls_read(p->tls, inbuf, sizeof(inbuf));
        if (n == 0)
            break;
        if (n < 0) {
            char why[200];
            snprintf(why, sizeof(why), "%s",
                     n == LP_TLS_EOF ? "closed before the response head" : lp_tls_error(p->tls));
            probe_done(p, 0, why);
            return;
        }
        probe_parse(p, inbuf, (size_t)n);
    }
    if (p->in_flight && p->tls && !probe_tls_send(p))
        lp_tls_in_trim(p->tls);
}

static void probe_tls_input(lp_probe_t *p, size_t n)
{
    lp_tls_in_commit(p->tls, n);
    if (p->handshaking) {
        int rc = lp_tls_handshake(p->tls);
        if (probe_tls_send(p) || rc == LP_AGAIN)
            return;
        if (rc == LP_ERROR) {
            char why[200];
            snprintf(why, sizeof(why), "TLS handshake failed: %s", lp_tls_error(p->tls));
            probe_done(p, 0, why);
            return;
        }
        p->handshaking = 0;
        if (probe_send_request(p))
            return;
    }
    probe_tls_pump(p);
}

static void on_probe_alloc(uv_handle_t *hd, size_t hint, uv_buf_t *buf)
{
    lp_probe_t *p = hd->data;
    *buf = p->tls ? lp_tls_in_space(p->tls) : uv_buf_init(inbuf, sizeof(inbuf));
}

static void on_probe_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    lp_probe_t *p = s->data;
    if (!p->in_flight || nread == 0)
        return;
    if (nread > 0) {
        if (p->tls)
            probe_tls_input(p, (size_t)nread);
        else
            probe_parse(p, buf->base, (size_t)nread);
        return;
    }
    if (p->tls && nread == UV_EOF && !p->handshaking) {
        /* What TLS still holds comes first. */
        lp_tls_in_eof(p->tls);
        probe_tls_pump(p);
    }
    if (p->handshaking) {
        char why[200];
        snprintf(why, sizeof(why), "TLS handshake failed: %s",
                 nread == UV_EOF ? "connection closed" : uv_strerror((int)nread));
        probe_done(p, 0, why);
        return;
    }
    probe_done(p, 0, nread == UV_EOF ? "closed before the response head" : uv_strerror((int)nread));
}

/* ---- a probe ---- */

static void on_probe_connect(uv_connect_t *c, int status)
{
    lp_probe_t *p = c->data;
    if (!p->in_flight || !p->tcp_open)
        return; /* timed out meanwhile */
    if (status < 0) {
        probe_done(p, 0, uv_strerror(status));
        return;
    }
    if (!p->hc->active_http) {
        probe_done(p, 1, "");
        return;
    }
    /* The response parser, with the proxy path's limits (as upstream.c sets them). */
    const lp_limits_t *lim = &checker.gen->config->limits;
    unsigned nh = lim->max_headers && lim->max_headers < PROBE_MAX_HEADERS
                      ? lim->max_headers
                      : (unsigned)PROBE_MAX_HEADERS;
    p->arena = lp_buf_get(&checker.bufs, LP_BUF_SMALL);
    p->fields = lp_buf_get(&checker.bufs, LP_BUF_SMALL);
    if (!p->arena || !p->fields) {
        probe_done(p, 0, "out of memory");
        return;
    }
    lp_h1_init(&p->h1, HTTP_RESPONSE, p, probe_body);
    p->h1.max_header_size = lim->max_header_size;
    if (p->h1.max_header_size > LP_BUF_SIZE - 1024)
        p->h1.max_header_size = LP_BUF_SIZE - 1024;
    p->h1.grow = probe_grow;
    lp_h1_set_storage(&p->h1, p->arena->data, p->arena->cap, (lp_header_t *)(void *)p->fields->data,
                      nh);
    if (uv_read_start((uv_stream_t *)&p->tcp, on_probe_alloc, on_probe_read)) {
        probe_done(p, 0, "cannot read");
        return;
    }
    if (!p->tls_ctx) {
        probe_send_request(p);
        return;
    }
    /* The deadline keeps running through the handshake. */
    p->tls = lp_tls_connect(p->tls_ctx, p->tls_name, &p->session, &checker.bufs);
    if (!p->tls) {
        probe_done(p, 0, "cannot start TLS");
        return;
    }
    p->handshaking = 1;
    if (lp_tls_handshake(p->tls) == LP_ERROR) {
        char why[200];
        snprintf(why, sizeof(why), "TLS handshake failed: %s", lp_tls_error(p->tls));
        probe_done(p, 0, why);
        return;
    }
    probe_tls_send(p);
}

static void on_probe_timer(uv_timer_t *t)
{
    lp_probe_t *p = t->data;
    if (p->stopping || p->in_flight)
        return;
    if (p->tcp_closing) {
        /* The last probe's socket is still closing: try again in a moment. */
        uv_timer_start(&p->timer, on_probe_timer, 10, 0);
        return;
    }
    uv_tcp_init(t->loop, &p->tcp);
    p->tcp.data = p;
    p->tcp_open = 1;
    p->handles++;
    p->in_flight = 1;
    p->handshaking = 0;
    p->creq.data = p;
    uv_timer_start(&p->timeout, on_probe_timeout, p->hc->timeout, 0);
    int rc =
        uv_tcp_connect(&p->creq, &p->tcp, (const struct sockaddr *)&p->addr.addr, on_probe_connect);
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
    if (!checker.pools_ready) {
        lp_bufpool_init(&checker.bufs, 8);
        checker.pools_ready = 1;
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
