#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/socket.h>
#include "accesslog.h"
#include "conn.h"
#include "log.h"
#include "lua_vm.h"
#include "upstream.h"
#include "worker.h"

/* A generation handed from the main thread to one worker (through its mailbox). */
typedef struct lp_switch_s {
    lp_gen_t *gen;
    struct lp_lua_s *vm;         /* this worker's VM for it (handed over), NULL without Lua */
    lp_upstream_rt_t *upstreams; /* this worker's upstreams for it (handed over) */
    int *fds;                    /* per listen entry: a new bound socket, or -1 to keep the old */
    int ok;
    char err[256];
} lp_switch_t;

/* The generation the main thread last installed (main thread only). */
lp_gen_t *lp_gen_current;

/* ---- listening sockets ---- */

int lp_listen_socket(const lp_listen_conf_t *lc, char *err, size_t errlen)
{
    /* libuv (1.44) has no SO_REUSEPORT flag: make the socket ourselves and hand it over.
     * Every worker binds its own socket to the port; the kernel spreads the accepts. */
    int fd = socket(lc->addr.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: socket: %s", lc->addr.text, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&lc->addr.addr, lc->addr.addrlen) < 0 ||
        listen(fd, lc->backlog) < 0) {
        snprintf(err, errlen, "listen %s: %s", lc->addr.text, strerror(errno));
        close(fd);
        return -1;
    }
    return fd;
}

int lp_listen_probe(const lp_listen_conf_t *lc, char *err, size_t errlen)
{
    /* SO_REUSEPORT would let a second instance (same user) bind a port another one serves
     * and silently split its traffic: a plain bind first proves the port is free. */
    int fd = socket(lc->addr.addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return 0;
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    int rc = bind(fd, (const struct sockaddr *)&lc->addr.addr, lc->addr.addrlen);
    int e = errno;
    close(fd);
    if (rc < 0) {
        snprintf(err, errlen, "listen %s: %s", lc->addr.text, strerror(e));
        return -1;
    }
    return 0;
}

static void on_listener_close(uv_handle_t *h)
{
    lp_listener_t *l = h->data;
    free(l->addr);
    free(l);
}

static int listener_start(lp_worker_t *w, const lp_listen_conf_t *lc, int fd)
{
    lp_listener_t *l = calloc(1, sizeof(*l));
    if (!l || !(l->addr = strdup(lc->addr.text))) {
        free(l);
        close(fd);
        return LP_ENOMEM;
    }
    l->w = w;
    l->tls = lc->tls;
    uv_tcp_init(&w->loop, &l->tcp);
    l->tcp.data = l;
    int rc = uv_tcp_open(&l->tcp, fd);
    if (!rc)
        rc = uv_listen((uv_stream_t *)&l->tcp, lc->backlog, lp_conn_on_connection);
    if (rc) {
        lp_log_error("listen %s: %s", lc->addr.text, uv_strerror(rc));
        l->closing = 1;
        uv_close((uv_handle_t *)&l->tcp, on_listener_close);
        return LP_EIO;
    }
    l->next = w->listeners;
    w->listeners = l;
    return 0;
}

static void listener_close(lp_worker_t *w, lp_listener_t *l)
{
    lp_listener_t **pp = &w->listeners;
    while (*pp && *pp != l)
        pp = &(*pp)->next;
    if (*pp)
        *pp = l->next;
    l->closing = 1;
    uv_close((uv_handle_t *)&l->tcp, on_listener_close);
}

static void close_listeners(lp_worker_t *w)
{
    while (w->listeners)
        listener_close(w, w->listeners);
}

/* ---- generations ---- */

void lp_wgen_release(lp_worker_t *w, lp_wgen_t *g)
{
    if (--g->refs)
        return;
    LP_UNUSED(w);
    lp_lua_retire(g->lua);
    lp_upstream_rt_free(g->upstreams, g->config->nupstreams);
    lp_gen_t *gen = g->gen;
    if (__atomic_sub_fetch(&gen->refs, 1, __ATOMIC_ACQ_REL) == 0) {
        lp_config_free(gen->config);
        free(gen);
    }
    free(g);
}

static int access_log_changed(const lp_config_t *a, const lp_config_t *b)
{
    if (!a)
        return 1;
    if (!a->access_log != !b->access_log)
        return 1;
    if (a->access_log && strcmp(a->access_log, b->access_log))
        return 1;
    return strcmp(a->access_format, b->access_format) != 0;
}

/* Switches this worker to sw->gen. Runs on the worker's thread (or before it starts). */
static void apply_switch(lp_worker_t *w, lp_switch_t *sw)
{
    const lp_config_t *cfg = sw->gen->config;
    lp_wgen_t *g = calloc(1, sizeof(*g));
    lp_upstream_rt_t *ups = sw->upstreams;
    sw->upstreams = NULL;
    if (!g || lp_upstream_rt_attach(w, ups, cfg->nupstreams, sw->gen->id)) {
        lp_upstream_rt_free(ups, cfg->nupstreams);
        ups = NULL;
    }
    lp_accesslog_t *log = NULL;
    int log_changed = access_log_changed(w->config, cfg);
    if (ups && log_changed && cfg->access_log) {
        log = lp_accesslog_open(cfg->access_log, cfg->access_format, sw->err, sizeof(sw->err));
        if (!log) {
            lp_upstream_rt_free(ups, cfg->nupstreams);
            ups = NULL;
        }
    }
    if (!ups) {
        if (!sw->err[0])
            snprintf(sw->err, sizeof(sw->err), "worker %d: out of memory", w->id);
        free(g);
        for (size_t i = 0; sw->fds && i < cfg->nlisten; i++)
            if (sw->fds[i] >= 0)
                close(sw->fds[i]);
        lp_lua_retire(sw->vm);
        sw->ok = 0;
        return;
    }
    /* Listeners: unchanged addresses keep their sockets; new ones start; removed ones close
     * (their connections finish on their own). */
    for (size_t i = 0; i < cfg->nlisten; i++) {
        if (sw->fds[i] >= 0) {
            listener_start(w, &cfg->listen[i], sw->fds[i]);
            sw->fds[i] = -1;
        }
    }
    lp_listener_t *l = w->listeners;
    while (l) {
        lp_listener_t *next = l->next;
        int wanted = 0;
        for (size_t i = 0; i < cfg->nlisten; i++)
            if (strcmp(cfg->listen[i].addr.text, l->addr) == 0) {
                wanted = 1;
                l->tls = cfg->listen[i].tls; /* new certificates for new connections */
            }
        if (!wanted)
            listener_close(w, l);
        l = next;
    }
    if (log_changed) {
        lp_accesslog_close(w->access);
        w->access = log;
    }
    g->id = sw->gen->id;
    g->gen = sw->gen;
    g->config = cfg;
    g->lua = sw->vm;
    g->upstreams = ups;
    g->refs = 1;
    lp_wgen_t *old = w->cur;
    w->cur = g;
    w->config = cfg;
    if (old)
        lp_wgen_release(w, old);
    /* Idle connections to targets the new generation no longer names close now. */
    lp_upstream_close_idle(w, g->id);
    sw->ok = 1;
}

/* ---- stopping ---- */

static void maybe_finish(lp_worker_t *w)
{
    if (!w->stopping)
        return;
    lp_upstream_close_idle(w, 0);
    if (lp_list_empty(&w->conns)) {
        uv_timer_stop(&w->drain_timer);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->flush, NULL);
        uv_close((uv_handle_t *)&w->hs_idle, NULL);
    }
}

static void on_drain_check(uv_timer_t *t)
{
    lp_worker_t *w = t->data;
    /* Connections that became idle since the last check close now. */
    lp_list_t *it = w->conns.next;
    while (it != &w->conns) {
        lp_list_t *next = it->next;
        lp_conn_drain(LP_CONTAINER_OF(it, lp_conn_t, link));
        it = next;
    }
    if (uv_now(&w->loop) >= w->drain_deadline) {
        int n = 0;
        it = w->conns.next;
        while (it != &w->conns) {
            lp_list_t *next = it->next;
            lp_conn_close(LP_CONTAINER_OF(it, lp_conn_t, link));
            n++;
            it = next;
        }
        if (n)
            lp_log_warn("drain timeout: closed %d connections", n);
    }
    maybe_finish(w);
}

static void on_wakeup(uv_async_t *a)
{
    lp_worker_t *w = a->data;
    uv_mutex_lock(&w->mbox_lock);
    lp_switch_t *sw = w->mbox;
    w->mbox = NULL;
    int stop = w->stop_requested;
    uv_mutex_unlock(&w->mbox_lock);
    if (sw) {
        apply_switch(w, sw);
        uv_sem_post(&w->mbox_done);
    }
    if (!stop || w->stopping)
        return;
    w->stopping = 1;
    close_listeners(w);
    w->drain_deadline = uv_now(&w->loop) + w->config->timeouts.drain;
    uv_timer_start(&w->drain_timer, on_drain_check, 0, 50);
}

static void on_flush(uv_prepare_t *p)
{
    lp_worker_t *w = p->data;
    lp_accesslog_flush(w->access);
    w->hs_turn_ns = 0; /* a new turn of I/O callbacks follows */
}

static void worker_main(void *arg)
{
    lp_worker_t *w = arg;
    lp_log_set_thread_id(w->id);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    lp_accesslog_flush(w->access);
    /* Everything is closed: the last generation goes, then the close callbacks run. */
    if (w->cur) {
        lp_wgen_t *g = w->cur;
        w->cur = NULL;
        lp_wgen_release(w, g);
    }
    uv_run(&w->loop, UV_RUN_DEFAULT);
    lp_upstream_destroy_all(w);
    while (w->free_reqs) {
        lp_req_t *r = w->free_reqs;
        w->free_reqs = r->next_free;
        free(r->headers);
        free(r->resp_headers);
        free(r);
    }
    lp_bufpool_destroy(&w->bufs);
    lp_wbpool_destroy(&w->wbatches);
    int rc = uv_loop_close(&w->loop);
    if (rc)
        lp_log_warn("loop close: %s", uv_strerror(rc));
}

static int worker_init(lp_worker_t *w, int id, char *err, size_t errlen)
{
    w->id = id;
    lp_list_init(&w->conns);
    lp_list_init(&w->peers);
    lp_bufpool_init(&w->bufs, 256);
    int rc = uv_loop_init(&w->loop);
    if (rc) {
        snprintf(err, errlen, "loop: %s", uv_strerror(rc));
        return LP_EIO;
    }
    uv_async_init(&w->loop, &w->wakeup, on_wakeup);
    w->wakeup.data = w;
    uv_timer_init(&w->loop, &w->drain_timer);
    w->drain_timer.data = w;
    uv_prepare_init(&w->loop, &w->flush);
    w->flush.data = w;
    uv_prepare_start(&w->flush, on_flush);
    uv_unref((uv_handle_t *)&w->flush);
    uv_idle_init(&w->loop, &w->hs_idle);
    w->hs_idle.data = w;
    lp_list_init(&w->hs_deferred);
    uv_mutex_init(&w->mbox_lock);
    uv_sem_init(&w->mbox_done, 0);
    return 0;
}

/* ---- building a generation (main thread) ---- */

static uint64_t next_gen_id = 1;

/* Builds everything a generation needs that can fail from the loaded config `cfg` (owned
 * from here: by the generation, or freed on failure): every worker's VM and sockets for new
 * listen addresses. On failure nothing is left behind. */
static int build_switches(lp_worker_t *ws, unsigned n, const lp_config_t *old, lp_config_t *cfg,
                          lp_switch_t *sw, char *err, size_t errlen)
{
    const char *path = cfg->path;
    int rc = 0;
    char ferr[512];
    if (lp_accesslog_check_format(cfg->access_format, ferr, sizeof(ferr))) {
        snprintf(err, errlen, "%s: %s", path, ferr);
        lp_config_free(cfg);
        return LP_ECONFIG;
    }
    if (cfg->access_log && (!old || access_log_changed(old, cfg))) {
        /* A log that cannot be opened fails the build, not a worker's switch. */
        lp_accesslog_t *probe =
            lp_accesslog_open(cfg->access_log, cfg->access_format, ferr, sizeof(ferr));
        if (!probe) {
            snprintf(err, errlen, "%s: %s", path, ferr);
            lp_config_free(cfg);
            return LP_ECONFIG;
        }
        lp_accesslog_close(probe);
    }
    if (old && cfg->workers != old->workers && cfg->workers != n)
        lp_log_warn("reload: workers = %u ignored: a reload keeps %u workers", cfg->workers, n);
    lp_gen_t *gen = calloc(1, sizeof(*gen));
    if (!gen) {
        lp_config_free(cfg);
        return LP_ENOMEM;
    }
    gen->config = cfg;
    gen->refs = (int)n;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    gen->loaded_at = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    unsigned built = 0;
    for (; built < n; built++) {
        lp_switch_t *s = &sw[built];
        memset(s, 0, sizeof(*s));
        s->gen = gen;
        s->fds = malloc((cfg->nlisten ? cfg->nlisten : 1) * sizeof(int));
        if (!s->fds) {
            rc = LP_ENOMEM;
            break;
        }
        for (size_t i = 0; i < cfg->nlisten; i++)
            s->fds[i] = -1;
        for (size_t i = 0; i < cfg->nlisten && !rc; i++) {
            int kept = 0;
            for (size_t j = 0; old && j < old->nlisten; j++)
                if (strcmp(old->listen[j].addr.text, cfg->listen[i].addr.text) == 0)
                    kept = 1;
            if (!kept && built == 0 && lp_listen_probe(&cfg->listen[i], err, errlen))
                rc = LP_EIO;
            else if (!kept && (s->fds[i] = lp_listen_socket(&cfg->listen[i], err, errlen)) < 0)
                rc = LP_EIO;
        }
        /* Made here so that init_worker may change the targets (proxy.upstream()). */
        if (!rc && !(s->upstreams = lp_upstream_rt_new(&ws[built], cfg)))
            rc = LP_ENOMEM;
        if (!rc)
            rc = lp_lua_open(&ws[built], cfg, s->upstreams, &s->vm, err, errlen);
        if (rc) {
            built++;
            break;
        }
    }
    if (rc) {
        for (unsigned i = 0; i < built; i++) {
            for (size_t j = 0; sw[i].fds && j < cfg->nlisten; j++)
                if (sw[i].fds[j] >= 0)
                    close(sw[i].fds[j]);
            free(sw[i].fds);
            lp_lua_retire(sw[i].vm);
            lp_upstream_rt_free(sw[i].upstreams, cfg->nupstreams);
        }
        lp_config_free(cfg);
        free(gen);
        return rc;
    }
    gen->id = next_gen_id++;
    return 0;
}

int lp_workers_check(const lp_config_t *cfg, char *err, size_t errlen)
{
    /* The access log opens (a start fails when it cannot). */
    if (cfg->access_log) {
        char ferr[512];
        lp_accesslog_t *probe =
            lp_accesslog_open(cfg->access_log, cfg->access_format, ferr, sizeof(ferr));
        if (!probe) {
            snprintf(err, errlen, "%s: %s", cfg->path, ferr);
            return LP_ECONFIG;
        }
        lp_accesslog_close(probe);
    }
    /* A worker that never runs: init_worker runs on a private loop (lua_vm.c) and the
     * upstreams are never attached to this one. */
    lp_worker_t w;
    memset(&w, 0, sizeof(w));
    w.id = 1;
    lp_upstream_rt_t *ups = lp_upstream_rt_new(&w, cfg);
    if (!ups)
        return LP_ENOMEM;
    struct lp_lua_s *vm = NULL;
    int rc = lp_lua_open(&w, cfg, ups, &vm, err, errlen);
    lp_lua_retire(vm);
    lp_lua_watchdog_stop();
    lp_upstream_rt_free(ups, cfg->nupstreams);
    return rc;
}

int lp_workers_start(lp_config_t *cfg, unsigned nworkers, lp_worker_t **out, char *err,
                     size_t errlen)
{
    *out = NULL;
    int rc = 0;
    unsigned n = nworkers ? nworkers : cfg->workers;
    lp_worker_t *ws = calloc(n, sizeof(*ws));
    lp_switch_t *sw = calloc(n, sizeof(*sw));
    if (!ws || !sw) {
        free(ws);
        free(sw);
        lp_config_free(cfg);
        return LP_ENOMEM;
    }
    for (unsigned i = 0; i < n && !rc; i++)
        rc = worker_init(&ws[i], (int)i + 1, err, errlen);
    if (!rc)
        rc = build_switches(ws, n, NULL, cfg, sw, err, errlen);
    else
        lp_config_free(cfg);
    if (rc) {
        free(sw);
        /* The loops hold nothing that needs closing yet beyond their own handles. */
        *out = NULL;
        return rc;
    }
    /* The threads do not run yet: the first generation is installed from here. */
    for (unsigned i = 0; i < n; i++) {
        apply_switch(&ws[i], &sw[i]);
        free(sw[i].fds);
        if (!sw[i].ok) {
            snprintf(err, errlen, "%s", sw[i].err);
            free(sw);
            return LP_EIO;
        }
    }
    lp_gen_current = sw[0].gen;
    free(sw);
    for (unsigned i = 0; i < n; i++) {
        if (uv_thread_create(&ws[i].thread, worker_main, &ws[i])) {
            snprintf(err, errlen, "cannot start worker thread %u", i + 1);
            return LP_EIO;
        }
        ws[i].started = 1;
    }
    *out = ws;
    return 0;
}

int lp_workers_reload(lp_worker_t *ws, unsigned n, const char *path, char *err, size_t errlen)
{
    lp_config_t *cfg;
    int rc = lp_config_load(path, &cfg, err, errlen);
    if (rc)
        return rc;
    lp_switch_t *sw = calloc(n, sizeof(*sw));
    if (!sw) {
        lp_config_free(cfg);
        return LP_ENOMEM;
    }
    const lp_config_t *old = lp_gen_current ? lp_gen_current->config : NULL;
    rc = build_switches(ws, n, old, cfg, sw, err, errlen);
    if (rc) {
        free(sw);
        return rc;
    }
    /* Everything is built: from here the switch happens on every worker. */
    lp_gen_t *gen = sw[0].gen;
    for (unsigned i = 0; i < n; i++) {
        uv_mutex_lock(&ws[i].mbox_lock);
        ws[i].mbox = &sw[i];
        uv_mutex_unlock(&ws[i].mbox_lock);
        uv_async_send(&ws[i].wakeup);
    }
    int failed = 0;
    for (unsigned i = 0; i < n; i++) {
        uv_sem_wait(&ws[i].mbox_done);
        if (!sw[i].ok) {
            failed = 1;
            snprintf(err, errlen, "%s", sw[i].err);
        }
        free(sw[i].fds);
    }
    free(sw);
    if (failed)
        return LP_EIO; /* some workers switched: they serve the new generation */
    lp_gen_current = gen;
    return 0;
}

void lp_workers_stop(lp_worker_t *ws, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        uv_mutex_lock(&ws[i].mbox_lock);
        ws[i].stop_requested = 1;
        uv_mutex_unlock(&ws[i].mbox_lock);
        uv_async_send(&ws[i].wakeup);
    }
    for (unsigned i = 0; i < n; i++) {
        if (ws[i].started)
            uv_thread_join(&ws[i].thread);
        lp_accesslog_close(ws[i].access);
        uv_mutex_destroy(&ws[i].mbox_lock);
        uv_sem_destroy(&ws[i].mbox_done);
    }
    free(ws);
}

void lp_workers_stats(const lp_worker_t *ws, unsigned n, uint64_t *conns, uint64_t *requests)
{
    *conns = *requests = 0;
    for (unsigned i = 0; i < n; i++) {
        *conns += __atomic_load_n(&ws[i].nconns, __ATOMIC_RELAXED);
        *requests += __atomic_load_n(&ws[i].requests, __ATOMIC_RELAXED);
    }
}
