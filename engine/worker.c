#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include "accesslog.h"
#include "cache_req.h"
#include "cache_room.h"
#include "conn.h"
#include "cosock.h"
#include "h2.h"
#include "h2_mem.h"
#include "trace.h"
#include "log.h"
#include "logw.h"
#include "lua_vm.h"
#include "metrics_scrape.h"
#include "upstream.h"
#include "request.h"
#include "rtable.h"
#include "upgrade.h"
#include "worker.h"

/* A generation switch, one worker's part. The main thread builds it (build_switches: the
 * config, this worker's VM, upstream state, access log and sockets), then every worker
 * prepares it on its own thread (SW_PREPARE: what must touch its loop and may fail), and
 * only when every worker prepared does any commit (SW_COMMIT, which cannot fail); otherwise
 * every worker drops its part (SW_ABORT). SW_REOPEN hands over a reopened access log. The
 * main thread owns the struct; the worker reads and writes it between the mailbox post and
 * its answer on mbox_done. */
enum { SW_PREPARE = 1, SW_COMMIT, SW_ABORT, SW_REOPEN, SW_ROUTES };

typedef struct lp_switch_s {
    int op;
    lp_gen_t *gen;               /* reference: the generation (the worker's after commit) */
    lp_wgen_t *wgen;             /* owned until commit */
    struct lp_lua_s *vm;         /* owned until commit, NULL without Lua */
    lp_upstream_rt_t *upstreams; /* owned until commit */
    lp_accesslog_t *access;      /* owned until commit: opened afresh; NULL when off */
    int *fds;                    /* owned: per listen entry, a new bound socket or -1 */
    struct lp_rtable_s *rtable;  /* SW_ROUTES: a reference for the worker to take over */
    lp_listener_t *fresh;        /* owned until commit: pending listeners for new entries */
    /* Owned: inherited sockets beyond one per worker (an upgrade from a process with more
     * workers): each must still be accepted on, or what its queue holds is refused. */
    struct {
        size_t i; /* the listen entry */
        int fd;   /* owned until prepared; -1 after */
    } * extra;
    size_t nextra;
    int ok;
    char err[256];
} lp_switch_t;

/* The generation the main thread last installed (main thread only). */
lp_gen_t *lp_gen_current;

/* ---- listening sockets ---- */

int lp_listen_socket(const lp_listen_conf_t *lc, const struct sockaddr *sa, socklen_t salen,
                     char *err, size_t errlen)
{
    /* libuv (1.44) has no SO_REUSEPORT flag: make the socket ourselves and hand it over.
     * Every worker binds its own socket to the port; the kernel spreads the accepts. */
    int fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: socket: %s", lc->addr.text, strerror(errno));
        return -1;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, sa, salen) < 0 || listen(fd, lc->backlog) < 0) {
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

static int addr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
}

void lp_sockaddr_text(const struct sockaddr_storage *ss, char *out, size_t outlen)
{
    char ip[64] = "?";
    if (ss->ss_family == AF_INET6) {
        uv_ip6_name((const struct sockaddr_in6 *)ss, ip, sizeof(ip));
        snprintf(out, outlen, "[%s]:%d", ip, addr_port(ss));
    } else {
        uv_ip4_name((const struct sockaddr_in *)ss, ip, sizeof(ip));
        snprintf(out, outlen, "%s:%d", ip, addr_port(ss));
    }
}

static void on_listener_close(uv_handle_t *h)
{
    free(h->data);
}

static void on_listener_connection(uv_stream_t *server, int status)
{
    lp_listener_t *l = server->data;
    if (l->pending) {
        /* Not accepting leaves the connection queued: libuv stops watching the socket
         * until uv_accept, which the commit calls (or the abort closes the socket). */
        if (status == 0)
            l->deferred = 1;
        return;
    }
    lp_conn_on_connection(server, status);
}

/* A listener for listen entry i on *fd, listening but pending (no accept) until the commit,
 * in sw->fresh. Takes the socket (closed on failure; -1 left in *fd): a bound one or an
 * inherited one (sw->fds, sw->extra). -1 with sw->err set. */
static int listener_prepare(lp_worker_t *w, lp_switch_t *sw, size_t i, int *fd_in)
{
    const lp_listen_conf_t *lc = &sw->gen->config->listen[i];
    char *err = sw->err;
    size_t errlen = sizeof(sw->err);
    int fd = *fd_in;
    *fd_in = -1;
    lp_listener_t *l = calloc(1, sizeof(*l));
    if (!l) {
        close(fd);
        snprintf(err, errlen, "worker %d: out of memory", w->id);
        return -1;
    }
    l->w = w;
    l->id = sw->gen->bound[i].id;
    l->tls = lc->tls;
    l->proxy_protocol = lc->proxy_protocol;
    l->http2 = lc->http2;
    l->pending = 1;
    uv_tcp_init(&w->loop, &l->tcp);
    l->tcp.data = l;
    int rc = uv_tcp_open(&l->tcp, fd);
    if (rc)
        close(fd); /* not the handle's yet */
    else
        rc = uv_listen((uv_stream_t *)&l->tcp, lc->backlog, on_listener_connection);
    if (rc) {
        snprintf(err, errlen, "worker %d: listen %s: %s", w->id, lc->addr.text, uv_strerror(rc));
        l->closing = 1;
        uv_close((uv_handle_t *)&l->tcp, on_listener_close);
        return -1;
    }
    l->next = sw->fresh;
    sw->fresh = l;
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

static void gen_free(lp_gen_t *gen)
{
    lp_config_free(gen->config);
    free(gen); /* and gen->bound, in the same block */
}

void lp_wgen_release(lp_worker_t *w, lp_wgen_t *g)
{
    if (--g->refs)
        return;
    LP_UNUSED(w);
    lp_lua_retire(g->lua);
    lp_upstream_rt_free(g->upstreams, g->config->nupstreams);
    lp_rtable_unref(g->rtable);
    free(g->m_route);
    free(g->m_up);
    lp_gen_t *gen = g->gen;
    if (__atomic_sub_fetch(&gen->refs, 1, __ATOMIC_ACQ_REL) == 0)
        gen_free(gen);
    free(g);
}

/* SW_PREPARE, on the worker's thread: the steps that need its loop and may fail. Nothing
 * here changes what the worker serves. */
static void prepare_switch(lp_worker_t *w, lp_switch_t *sw)
{
    const lp_config_t *cfg = sw->gen->config;
    sw->ok = 0;
    if (lp_upstream_rt_attach(w, sw->upstreams, cfg->nupstreams, sw->gen->id)) {
        snprintf(sw->err, sizeof(sw->err), "worker %d: out of memory", w->id);
        return;
    }
    for (size_t i = 0; i < cfg->nlisten; i++)
        if (sw->fds[i] >= 0 && listener_prepare(w, sw, i, &sw->fds[i]))
            return;
    for (size_t j = 0; j < sw->nextra; j++)
        if (listener_prepare(w, sw, sw->extra[j].i, &sw->extra[j].fd))
            return;
    sw->ok = 1;
}

/* SW_ABORT (or a failed build): drops everything the switch holds. On the worker's thread
 * once prepared (its listeners and timers are handles of that loop). Not the generation. */
static void abort_switch(lp_switch_t *sw, size_t nupstreams, size_t nlisten)
{
    while (sw->fresh) {
        lp_listener_t *l = sw->fresh;
        sw->fresh = l->next;
        l->closing = 1;
        uv_close((uv_handle_t *)&l->tcp, on_listener_close);
    }
    for (size_t i = 0; sw->fds && i < nlisten; i++)
        if (sw->fds[i] >= 0)
            close(sw->fds[i]);
    free(sw->fds);
    sw->fds = NULL;
    for (size_t j = 0; j < sw->nextra; j++)
        if (sw->extra[j].fd >= 0)
            close(sw->extra[j].fd);
    free(sw->extra);
    sw->extra = NULL;
    sw->nextra = 0;
    lp_upstream_rt_free(sw->upstreams, nupstreams);
    sw->upstreams = NULL;
    lp_lua_retire(sw->vm);
    sw->vm = NULL;
    lp_accesslog_close(sw->access);
    sw->access = NULL;
    if (sw->wgen) {
        free(sw->wgen->m_route);
        free(sw->wgen->m_up);
    }
    free(sw->wgen);
    sw->wgen = NULL;
}

static int listen_slot_wanted(const lp_gen_t *gen, uint64_t id, size_t *index)
{
    for (size_t i = 0; i < gen->config->nlisten; i++)
        if (gen->bound[i].id == id) {
            *index = i;
            return 1;
        }
    return 0;
}

/* SW_COMMIT, on the worker's thread (or before it starts): makes sw->gen current. Cannot
 * fail: everything that could was done by the build and the prepare. */
static void commit_switch(lp_worker_t *w, lp_switch_t *sw)
{
    const lp_config_t *cfg = sw->gen->config;
    lp_wgen_t *g = sw->wgen;
    sw->wgen = NULL;
    g->id = sw->gen->id;
    g->gen = sw->gen;
    g->config = cfg;
    g->lua = sw->vm;
    g->upstreams = sw->upstreams;
    g->rtable = cfg->rtable;
    lp_rtable_ref(g->rtable);
    g->refs = 1;
    sw->vm = NULL;
    sw->upstreams = NULL;
    /* Listeners of entries the new config keeps stay (new certificates for new
     * connections); the others close (their connections finish on their own). */
    lp_listener_t *l = w->listeners;
    while (l) {
        lp_listener_t *next = l->next;
        size_t i;
        if (listen_slot_wanted(sw->gen, l->id, &i)) {
            l->tls = cfg->listen[i].tls;
            l->proxy_protocol = cfg->listen[i].proxy_protocol;
            l->http2 = cfg->listen[i].http2;
        } else
            listener_close(w, l);
        l = next;
    }
    lp_listener_t *fresh = sw->fresh;
    sw->fresh = NULL;
    lp_accesslog_t *old_log = w->access;
    w->access = sw->access;
    sw->access = NULL;
    lp_accesslog_close(old_log);
    lp_wgen_t *old = w->cur;
    int reloaded = old != NULL; /* not the first generation */
    w->cur = g;
    w->config = cfg;
    lp_trace_export_config(w, cfg);
    lp_lua_attach(g->lua, g); /* timers init_worker made start now */
    if (old) {
        lp_lua_generation_ended(old->lua); /* its pending timers run, premature */
        lp_wgen_release(w, old);
    }
    /* New listeners accept only now, so that their first connection sees this generation. */
    while (fresh) {
        l = fresh;
        fresh = l->next;
        l->next = w->listeners;
        w->listeners = l;
        l->pending = 0;
        if (l->deferred) {
            l->deferred = 0;
            lp_conn_on_connection((uv_stream_t *)&l->tcp, 0);
        }
    }
    /* Idle connections to targets the new generation no longer names close now. */
    lp_upstream_close_idle(w, g->id);
    if (reloaded)
        lp_h2_reloaded(w); /* #17: GOAWAY on HTTP/2 connections */
    free(sw->fds);
    sw->fds = NULL;
    free(sw->extra);
    sw->extra = NULL;
    sw->nextra = 0;
    sw->ok = 1;
}

/* ---- stopping ---- */

static void maybe_finish(lp_worker_t *w)
{
    if (!w->stopping)
        return;
    lp_upstream_close_idle(w, 0);
    lp_cosock_worker_close(w); /* proxy.tcp's idle connections */
    if (uv_now(&w->loop) >= w->drain_deadline) {
        lp_lua_background_stop(w, 1);
        lp_req_end_detached(w, 1);
    }
    if (lp_list_empty(&w->conns) && lp_list_empty(&w->detached) && !lp_lua_background(w)) {
        lp_lua_sched_close(w);
        lp_cache_worker_close(w); /* no wait is left: other threads stop waking this one */
        uv_timer_stop(&w->drain_timer);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->flush, NULL);
        uv_close((uv_handle_t *)&w->log_timer, NULL);
        uv_close((uv_handle_t *)&w->hs_idle, NULL);
        free(w->hs_q); /* no connection is left to wait in it */
        w->hs_q = NULL;
        w->hs_first = w->hs_n = w->hs_cap = 0;
        lp_turns_close(&w->turns);
        lp_ep_timers_close(&w->ep_env.timers); /* no client left; idle upstreams closed above */
        uv_close((uv_handle_t *)&w->house, NULL);
        lp_trace_export_close(w); /* what waits to go is dropped (counted) */
    }
}

/* Once a second: what a peak left in the free lists and went unused for a whole second
 * goes back to malloc, and malloc gives it back to the system. Idle memory then returns to
 * its level after a burst (the idle connections of a peak cost only their struct). */
/* Gives the C heap's free pages back to the kernel. Not under AddressSanitizer: its
 * allocator owns the heap there, and glibc's malloc_trim on an arena glibc never set up
 * reads through a NULL pointer (a crash seen after a TLS handshake burst freed its queue). */
#if defined(__SANITIZE_ADDRESS__)
#define LP_TRIM_HEAP 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define LP_TRIM_HEAP 0
#endif
#endif
#ifndef LP_TRIM_HEAP
#define LP_TRIM_HEAP 1
#endif
static void trim_heap(void)
{
    if (LP_TRIM_HEAP)
        malloc_trim(0);
}

void lp_worker_wall_sync(lp_worker_t *w)
{
    struct timespec mono, wall;
    clock_gettime(CLOCK_MONOTONIC, &mono);
    clock_gettime(CLOCK_REALTIME, &wall);
    w->wall_offset = ((double)wall.tv_sec - (double)mono.tv_sec) +
                     ((double)wall.tv_nsec - (double)mono.tv_nsec) * 1e-9;
}

static void on_house(uv_timer_t *t)
{
    lp_worker_t *w = t->data;
    lp_worker_wall_sync(w);
    LP_M_SET(&w->m_cells[LP_WM_LUA_MEM], lp_lua_memory(w->cur ? w->cur->lua : NULL));
    lp_lua_background_stop(w, 0); /* of old generations, past timeouts.drain */
    lp_req_end_detached(w, 0);
    lp_cache_room_recount(); /* header arrays of the requests made next (request.c) */
    size_t freed = lp_req_trim(w) + lp_bufpool_trim(&w->bufs) + lp_wbpool_trim(&w->wbatches) +
                   lp_zippool_trim(&w->zips) + lp_h2_pool_trim(w->h2_pool);
    if (w->hs_cap > 64 && w->hs_first == w->hs_n) {
        freed += w->hs_cap * sizeof(*w->hs_q); /* a handshake burst's queue, empty again */
        free(w->hs_q);
        w->hs_q = NULL;
        w->hs_first = w->hs_n = w->hs_cap = 0;
    }
    if (freed >= 256 * 1024)
        trim_heap();
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
        switch (sw->op) {
        case SW_PREPARE:
            prepare_switch(w, sw);
            break;
        case SW_COMMIT:
            commit_switch(w, sw);
            break;
        case SW_ABORT:
            abort_switch(sw, sw->gen->config->nupstreams, sw->gen->config->nlisten);
            break;
        case SW_ROUTES:
            /* New requests of this generation use the new table; requests in flight keep
             * the one they hold. A worker already on a newer generation drops it. */
            if (w->cur && w->cur->gen == sw->gen) {
                lp_rtable_unref(w->cur->rtable);
                w->cur->rtable = sw->rtable;
            } else
                lp_rtable_unref(sw->rtable);
            sw->rtable = NULL;
            break;
        case SW_REOPEN: {
            lp_accesslog_t *old = w->access;
            w->access = sw->access;
            sw->access = NULL;
            lp_accesslog_close(old);
            break;
        }
        }
        uv_sem_post(&w->mbox_done);
    }
    if (!stop || w->stopping)
        return;
    w->stopping = 1;
    close_listeners(w);
    if (w->cur)
        lp_lua_generation_ended(w->cur->lua); /* pending timers run, premature */
    w->drain_deadline = uv_now(&w->loop) + w->config->timeouts.drain;
    uv_timer_start(&w->drain_timer, on_drain_check, 0, 50);
}

static void on_log_timer(uv_timer_t *t)
{
    lp_worker_t *w = t->data;
    lp_accesslog_tick(w->access, uv_now(&w->loop));
}

/* Before the loop sleeps: access log lines whose flush interval passed go to the writer
 * thread; younger ones wait, with the timer set to hand them over if the loop idles. And
 * the HTTP/2 sessions whose output this turn's responses asked for send it, once each. */
static void on_flush(uv_prepare_t *p)
{
    lp_worker_t *w = p->data;
    int64_t due = lp_accesslog_tick(w->access, uv_now(&w->loop));
    if (due >= 0 && !uv_is_active((uv_handle_t *)&w->log_timer))
        uv_timer_start(&w->log_timer, on_log_timer, (uint64_t)due + 1, 0);
    w->hs_turn_ns = 0; /* a new turn of I/O callbacks follows */
    lp_h2_flush_turn(w);
}

static void worker_main(void *arg)
{
    lp_worker_t *w = arg;
    lp_log_set_thread_id(w->id);
    /* Named so that top -H, ps -L and /proc/PID/task/N/comm tell the workers apart. */
    char name[16];
    snprintf(name, sizeof name, "lp-worker-%d", w->id);
    prctl(PR_SET_NAME, name, 0, 0, 0);
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
    lp_req_free_all(w);
    lp_trace_export_free(w);
    lp_zippool_destroy(&w->zips);
    lp_h2_pool_free(w->h2_pool); /* every session went with its connection */
    w->h2_pool = NULL;
    lp_bufpool_destroy(&w->bufs);
    lp_wbpool_destroy(&w->wbatches);
    int rc = uv_loop_close(&w->loop);
    if (rc)
        lp_log_warn("loop close: %s", uv_strerror(rc));
}

static void close_any(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static int worker_init(lp_worker_t *w, int id, char *err, size_t errlen)
{
    w->id = id;
    lp_list_init(&w->conns);
    lp_list_init(&w->detached);
    lp_list_init(&w->peers);
    lp_list_init(&w->h2_out);
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
    lp_ep_env_init(&w->ep_env, &w->loop, &w->bufs, &w->wbatches);
    lp_worker_wall_sync(w);
    uv_timer_init(&w->loop, &w->house);
    w->house.data = w;
    uv_timer_start(&w->house, on_house, 1000, 1000);
    uv_unref((uv_handle_t *)&w->house);
    uv_prepare_init(&w->loop, &w->flush);
    w->flush.data = w;
    uv_prepare_start(&w->flush, on_flush);
    uv_unref((uv_handle_t *)&w->flush);
    uv_timer_init(&w->loop, &w->log_timer);
    w->log_timer.data = w;
    uv_unref((uv_handle_t *)&w->log_timer);
    uv_idle_init(&w->loop, &w->hs_idle);
    w->hs_idle.data = w;
    lp_turns_init(&w->turns, &w->loop);
    lp_lua_sched_init(w);
    if (lp_trace_export_init(w)) {
        snprintf(err, errlen, "tracing: out of memory");
        uv_walk(&w->loop, close_any, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        uv_loop_close(&w->loop);
        return LP_ENOMEM;
    }
    uv_mutex_init(&w->mbox_lock);
    uv_sem_init(&w->mbox_done, 0);
    return 0;
}

/* ---- building a generation (main thread) ---- */

static uint64_t next_gen_id = 1;
static uint64_t next_listen_id = 1;

/* The listen entry of `old` that entry `lc` continues (same configured address, or the
 * address it was bound to: a config may name the port that port 0 resolved to), not
 * already taken by an earlier entry. -1: a new entry. */
static long kept_slot(const lp_gen_t *old, const lp_listen_conf_t *lc, const char *taken)
{
    for (size_t j = 0; old && j < old->config->nlisten; j++)
        if (!taken[j] && (strcmp(old->config->listen[j].addr.text, lc->addr.text) == 0 ||
                          strcmp(old->bound[j].text, lc->addr.text) == 0))
            return (long)j;
    return -1;
}

/* An inherited socket for worker k's switch beyond its first: accepted on as well. */
static int add_extra(lp_switch_t *sw, size_t i, int fd)
{
    void *n = realloc(sw->extra, (sw->nextra + 1) * sizeof(*sw->extra));
    if (!n)
        return -1;
    sw->extra = n;
    sw->extra[sw->nextra].i = i;
    sw->extra[sw->nextra].fd = fd;
    sw->nextra++;
    return 0;
}

/* Opens one socket per worker for a new listen entry. Port 0 is resolved once, by the
 * first socket, and the others bind the port it got. After an upgrade, the sockets the old
 * process accepted on for this address come first (the same sockets: nothing queued on
 * them is lost when it closes its copies); workers beyond their number bind afresh into
 * the same SO_REUSEPORT group, and sockets beyond the workers' number are spread over them. */
static int bind_slot(lp_switch_t *sw, unsigned n, size_t i, const lp_listen_conf_t *lc,
                     lp_bound_t *b, char *err, size_t errlen)
{
    struct sockaddr_storage ss = lc->addr.addr;
    socklen_t sslen = lc->addr.addrlen;
    int got[LP_BOUND_FDS];
    size_t ng = lp_upgrade_take('L', lc->addr.text, got, LP_BOUND_FDS);
    b->nfds = 0;
    if (ng) {
        sslen = sizeof(ss);
        int rc = getsockname(got[0], (struct sockaddr *)&ss, &sslen);
        for (size_t j = 0; j < ng; j++) {
            if (!rc && j < n) {
                sw[j].fds[i] = got[j];
            } else if (rc || add_extra(&sw[j % n], i, got[j])) {
                close(got[j]);
                continue;
            }
            b->fds[b->nfds++] = got[j];
        }
        if (rc) {
            snprintf(err, errlen, "listen %s: inherited socket: %s", lc->addr.text,
                     strerror(errno));
            return LP_EIO;
        }
        if (b->nfds < ng) {
            snprintf(err, errlen, "listen %s: out of memory", lc->addr.text);
            return LP_ENOMEM;
        }
    } else if (addr_port(&ss) != 0 && lp_listen_probe(lc, err, errlen)) {
        return LP_EIO;
    }
    for (unsigned k = (unsigned)ng; k < n; k++) {
        if ((sw[k].fds[i] = lp_listen_socket(lc, (struct sockaddr *)&ss, sslen, err, errlen)) < 0)
            return LP_EIO;
        b->fds[b->nfds++] = sw[k].fds[i];
        if (k == 0 && getsockname(sw[k].fds[i], (struct sockaddr *)&ss, &sslen) < 0) {
            snprintf(err, errlen, "listen %s: getsockname: %s", lc->addr.text, strerror(errno));
            return LP_EIO;
        }
    }
    b->id = next_listen_id++;
    lp_sockaddr_text(&ss, b->text, sizeof(b->text));
    return 0;
}

/* The worker k's cells of every route and upstream of cfg into g (metrics.h): blocks by
 * name, so that a reload keeping a name keeps counting where it did. -1: out of memory. */
static int metrics_wgen(lp_wgen_t *g, const lp_config_t *cfg, unsigned k)
{
    if (!cfg->metrics.enabled)
        return 0;
    size_t nb = lp_metrics.nbounds;
    g->m_route = calloc(cfg->nroutes + 1, sizeof(*g->m_route));
    g->m_up = calloc(cfg->nupstreams + 1, sizeof(*g->m_up));
    if (!g->m_route || !g->m_up)
        return -1;
    char key[512];
    for (size_t i = 0; i <= cfg->nroutes; i++) {
        size_t kl = lp_metrics_key(key, sizeof(key), "route",
                                   i < cfg->nroutes ? cfg->routes[i].name : "", NULL, NULL);
        lp_mblock_t *b = kl ? lp_metrics_block(&lp_metrics, key, kl, LP_MR_BUCKETS + nb + 1) : NULL;
        if (!b)
            return -1;
        g->m_route[i] = b->cells[k];
    }
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        size_t kl =
            lp_metrics_key(key, sizeof(key), "upstream", cfg->upstreams[i].name, NULL, NULL);
        lp_mblock_t *b = kl ? lp_metrics_block(&lp_metrics, key, kl, LP_MU_BUCKETS + nb + 1) : NULL;
        if (!b)
            return -1;
        g->m_up[i] = b->cells[k];
    }
    return 0;
}

/* One access log per worker (sw[k].access), over one output opened here (so a FIFO or a
 * socket is opened once). 0, or LP_ECONFIG with *err set. */
static int open_access_logs(const lp_config_t *cfg, lp_switch_t *sw, unsigned n, char *err,
                            size_t errlen)
{
    char ferr[512] = "";
    lp_logsink_t *sink = lp_logsink_open(&cfg->access_out, "access", ferr, sizeof(ferr));
    if (!sink) {
        snprintf(err, errlen, "%s: access log %s", cfg->path, ferr);
        return LP_ECONFIG;
    }
    lp_accesslog_opts_t o = {.sink = sink,
                             .severity = cfg->access_out.severity,
                             .flush_ms = cfg->log_flush_ms,
                             .sample = cfg->log_sample,
                             .always_status = cfg->log_always_status,
                             .always_slower_ms = cfg->log_always_slower_ms};
    int rc = 0;
    for (unsigned k = 0; k < n && !rc; k++) {
        if (!(sw[k].access = lp_accesslog_new(&cfg->access_format, &o, ferr, sizeof(ferr)))) {
            snprintf(err, errlen, "%s: %s", cfg->path,
                     ferr[0] ? ferr : "access log: out of memory");
            rc = LP_ECONFIG;
        }
    }
    lp_logsink_unref(sink);
    return rc;
}

/* Builds everything a generation needs that the main thread can make and that can fail from
 * the loaded config `cfg` (owned from here: by the generation, or freed on failure): for
 * every worker its VM, upstream state, access log (opened afresh, so a
 * rotated file is let go) and sockets for new listen entries. On failure nothing is left. */
static int build_switches(lp_worker_t *ws, unsigned n, const lp_gen_t *old, lp_config_t *cfg,
                          lp_switch_t *sw, char *err, size_t errlen)
{
    const char *path = cfg->path;
    int rc = 0;
    char ferr[512];
    if (!cfg->materialised) {
        /* Addresses and TLS contexts are built before, off the loops (config.h). */
        snprintf(err, errlen, "%s: the config was not materialised (internal error)", path);
        lp_config_free(cfg);
        return LP_EINVAL;
    }
    if (lp_accesslog_check_format(&cfg->access_format, ferr, sizeof(ferr))) {
        snprintf(err, errlen, "%s: %s", path, ferr);
        lp_config_free(cfg);
        return LP_ECONFIG;
    }
    if (old && cfg->workers != old->config->workers && cfg->workers != n)
        lp_log_warn("reload: workers = %u ignored: a reload keeps %u workers", cfg->workers, n);
    /* One block: whoever drops the last reference frees it with free() (health_check.c). */
    lp_gen_t *gen = calloc(1, sizeof(*gen) + cfg->nlisten * sizeof(lp_bound_t));
    char *taken = calloc(old ? old->config->nlisten + 1 : 1, 1);
    if (gen)
        gen->bound = (lp_bound_t *)(gen + 1);
    if (!gen || !taken) {
        free(gen);
        free(taken);
        lp_config_free(cfg);
        return LP_ENOMEM;
    }
    gen->config = cfg;
    gen->refs = (int)n;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    gen->loaded_at = (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
    for (unsigned k = 0; k < n; k++) {
        memset(&sw[k], 0, sizeof(sw[k]));
        sw[k].gen = gen;
        if (!(sw[k].fds = malloc((cfg->nlisten + 1) * sizeof(int))))
            rc = LP_ENOMEM;
        for (size_t i = 0; sw[k].fds && i < cfg->nlisten; i++)
            sw[k].fds[i] = -1;
    }
    for (size_t i = 0; i < cfg->nlisten && !rc; i++) {
        long j = kept_slot(old, &cfg->listen[i], taken);
        if (j >= 0) {
            taken[j] = 1;
            gen->bound[i] = old->bound[j];
        } else {
            rc = bind_slot(sw, n, i, &cfg->listen[i], &gen->bound[i], err, errlen);
        }
    }
    free(taken);
    /* The descriptors each worker keeps (its access log) first: the VMs need some only for
     * a moment. */
    if (!rc && cfg->access_log)
        rc = open_access_logs(cfg, sw, n, err, errlen);
    if (!rc && lp_metrics_set_bounds(&lp_metrics, cfg->metrics.buckets, cfg->metrics.nbuckets))
        lp_log_warn("reload: metrics.buckets changed: the histograms keep the bounds they "
                    "started with until a restart");
    /* The overlay's admin routes count under their names too (made before any worker has
     * the table). */
    if (!rc && cfg->rtable && lp_rtable_meter(cfg->rtable, cfg))
        rc = LP_ENOMEM;
    for (unsigned k = 0; k < n && !rc; k++) {
        lp_switch_t *s = &sw[k];
        if (!(s->wgen = calloc(1, sizeof(*s->wgen))))
            rc = LP_ENOMEM;
        if (!rc && metrics_wgen(s->wgen, cfg, k))
            rc = LP_ENOMEM;
        /* Made here so that init_worker may change the targets (proxy.upstream()). */
        if (!rc && !(s->upstreams = lp_upstream_rt_new(&ws[k], cfg)))
            rc = LP_ENOMEM;
        for (size_t i = 0; !rc && s->wgen->m_up && i < cfg->nupstreams; i++) {
            lp_upstream_rt_t *u = &s->upstreams[i];
            u->m = s->wgen->m_up[i];
            for (size_t j = 0; !rc && j < u->ntargets; j++) {
                char key[512];
                size_t kl = lp_metrics_key(key, sizeof(key), "target", cfg->upstreams[i].name,
                                           u->targets[j]->addr.text, NULL);
                lp_mblock_t *b = kl ? lp_metrics_block(&lp_metrics, key, kl, LP_MT_N) : NULL;
                if (b)
                    u->targets[j]->m = b->cells[k];
                else if (kl)
                    rc = LP_ENOMEM; /* a name too long for a key: not counted */
            }
        }
        if (!rc)
            rc = lp_lua_open(&ws[k], cfg, s->upstreams, &s->vm, err, errlen);
    }
    if (rc) {
        for (unsigned k = 0; k < n; k++)
            abort_switch(&sw[k], cfg->nupstreams, cfg->nlisten);
        gen_free(gen);
        return rc;
    }
    gen->id = next_gen_id++;
    return 0;
}

/* Posts one step to every worker and waits for all; 0 when every worker did it. Before the
 * threads run (start-up), the main thread does the steps itself. */
static int run_step(lp_worker_t *ws, unsigned n, lp_switch_t *sw, int op, char *err, size_t errlen)
{
    for (unsigned i = 0; i < n; i++) {
        sw[i].op = op;
        sw[i].ok = 0;
        sw[i].err[0] = 0;
        if (!ws[i].started) {
            if (op == SW_PREPARE)
                prepare_switch(&ws[i], &sw[i]);
            else if (op == SW_COMMIT)
                commit_switch(&ws[i], &sw[i]);
            else
                abort_switch(&sw[i], sw[i].gen->config->nupstreams, sw[i].gen->config->nlisten);
            continue;
        }
        uv_mutex_lock(&ws[i].mbox_lock);
        ws[i].mbox = &sw[i];
        uv_mutex_unlock(&ws[i].mbox_lock);
        uv_async_send(&ws[i].wakeup);
    }
    for (unsigned i = 0; i < n; i++)
        if (ws[i].started)
            uv_sem_wait(&ws[i].mbox_done);
    int rc = 0;
    for (unsigned i = 0; i < n && op == SW_PREPARE; i++)
        if (!sw[i].ok && !rc) {
            snprintf(err, errlen, "%s", sw[i].err[0] ? sw[i].err : "prepare failed");
            rc = LP_EIO;
        }
    return rc;
}

/* Prepares sw on every worker, then commits everywhere, or aborts everywhere if any worker
 * failed: every worker serves the same generation afterwards. */
static int switch_all(lp_worker_t *ws, unsigned n, lp_switch_t *sw, char *err, size_t errlen)
{
    lp_gen_t *gen = sw[0].gen;
    const lp_gen_t *old = lp_gen_current;
    if (run_step(ws, n, sw, SW_PREPARE, err, errlen)) {
        run_step(ws, n, sw, SW_ABORT, err, errlen);
        gen_free(gen); /* no worker took it */
        return LP_EIO;
    }
    /* New listen entries, found before the commit lets the workers free `old`. */
    char *fresh = calloc(gen->config->nlisten + 1, 1);
    for (size_t i = 0; fresh && i < gen->config->nlisten; i++) {
        fresh[i] = 1;
        for (size_t j = 0; old && j < old->config->nlisten; j++)
            if (old->bound[j].id == gen->bound[i].id)
                fresh[i] = 0;
    }
    run_step(ws, n, sw, SW_COMMIT, err, errlen);
    lp_gen_current = gen;
    lp_config_apply_shared(gen->config); /* resized dicts take their new size (cannot fail) */
    for (size_t i = 0; fresh && i < gen->config->nlisten; i++)
        if (fresh[i])
            lp_log_notice("listening on %s (%u workers)", gen->bound[i].text, n);
    free(fresh);
    return 0;
}

int lp_workers_check(const lp_config_t *cfg, char *err, size_t errlen)
{
    /* The access log opens (a start fails when it cannot). */
    if (cfg->access_log) {
        lp_switch_t probe;
        memset(&probe, 0, sizeof(probe));
        if (open_access_logs(cfg, &probe, 1, err, errlen))
            return LP_ECONFIG;
        lp_accesslog_close(probe.access);
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

/* A start that failed before any thread ran: the first `ninit` workers' loops hold only
 * their own handles (embedded in the worker or its trace exporter) and, when the switch
 * got that far, a generation. Everything goes, as worker_main's ending does. */
static void workers_unwind(lp_worker_t *ws, unsigned ninit)
{
    for (unsigned i = 0; i < ninit; i++) {
        lp_worker_t *w = &ws[i];
        if (w->cur) {
            lp_wgen_t *g = w->cur;
            w->cur = NULL;
            lp_wgen_release(w, g);
        }
        uv_walk(&w->loop, close_any, NULL);
        uv_run(&w->loop, UV_RUN_DEFAULT);
        lp_upstream_destroy_all(w);
        lp_req_free_all(w);
        lp_trace_export_free(w);
        lp_zippool_destroy(&w->zips);
        lp_bufpool_destroy(&w->bufs);
        lp_wbpool_destroy(&w->wbatches);
        uv_loop_close(&w->loop);
        uv_mutex_destroy(&w->mbox_lock);
        uv_sem_destroy(&w->mbox_done);
    }
    free(ws);
    lp_metrics_free(&lp_metrics);
    lp_metrics_lua_free();
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
    unsigned ninit = 0; /* workers initialised (one that fails undoes its own part) */
    for (unsigned i = 0; i < n && !rc; i++)
        if (!(rc = worker_init(&ws[i], (int)i + 1, err, errlen)))
            ninit++;
    lp_metrics_init(&lp_metrics, n);
    if (!rc)
        rc = build_switches(ws, n, NULL, cfg, sw, err, errlen);
    else
        lp_config_free(cfg);
    /* The threads do not run yet: the first generation is installed from here. */
    if (!rc)
        rc = switch_all(ws, n, sw, err, errlen);
    free(sw);
    if (rc) {
        workers_unwind(ws, ninit);
        return rc;
    }
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

int lp_workers_reload(lp_worker_t *ws, unsigned n, lp_config_t *cfg, char *err, size_t errlen)
{
    int rc = 0;
    lp_switch_t *sw = calloc(n, sizeof(*sw));
    if (!sw) {
        lp_config_free(cfg);
        return LP_ENOMEM;
    }
    rc = build_switches(ws, n, lp_gen_current, cfg, sw, err, errlen);
    if (!rc)
        rc = switch_all(ws, n, sw, err, errlen);
    free(sw);
    return rc;
}

int lp_workers_reopen_logs(lp_worker_t *ws, unsigned n, char *err, size_t errlen)
{
    const lp_config_t *cfg = lp_gen_current->config;
    if (!cfg->access_log)
        return 0;
    lp_switch_t *sw = calloc(n, sizeof(*sw));
    if (!sw)
        return LP_ENOMEM;
    int rc = open_access_logs(cfg, sw, n, err, errlen) ? LP_EIO : 0;
    for (unsigned i = 0; i < n && !rc; i++) {
        sw[i].op = SW_REOPEN;
        uv_mutex_lock(&ws[i].mbox_lock);
        ws[i].mbox = &sw[i];
        uv_mutex_unlock(&ws[i].mbox_lock);
        uv_async_send(&ws[i].wakeup);
    }
    for (unsigned i = 0; i < n && !rc; i++)
        uv_sem_wait(&ws[i].mbox_done);
    for (unsigned i = 0; i < n; i++)
        lp_accesslog_close(sw[i].access); /* what a worker did not take (on failure) */
    free(sw);
    return rc;
}

void lp_workers_set_routes(lp_worker_t *ws, unsigned n, lp_rtable_t *t)
{
    lp_switch_t *sw = calloc(n, sizeof(*sw));
    if (!sw) { /* no room to ask: every worker answers from the stack in turn */
        for (unsigned i = 0; i < n; i++) {
            lp_switch_t one = {.op = SW_ROUTES, .gen = lp_gen_current, .rtable = t};
            lp_rtable_ref(t);
            uv_mutex_lock(&ws[i].mbox_lock);
            ws[i].mbox = &one;
            uv_mutex_unlock(&ws[i].mbox_lock);
            uv_async_send(&ws[i].wakeup);
            uv_sem_wait(&ws[i].mbox_done);
        }
        return;
    }
    for (unsigned i = 0; i < n; i++) {
        sw[i].op = SW_ROUTES;
        sw[i].gen = lp_gen_current;
        sw[i].rtable = t;
        lp_rtable_ref(t);
        uv_mutex_lock(&ws[i].mbox_lock);
        ws[i].mbox = &sw[i];
        uv_mutex_unlock(&ws[i].mbox_lock);
        uv_async_send(&ws[i].wakeup);
    }
    for (unsigned i = 0; i < n; i++)
        uv_sem_wait(&ws[i].mbox_done);
    free(sw);
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
    lp_metrics_free(&lp_metrics); /* no worker is left to write a cell */
    lp_metrics_lua_free();
}

void lp_workers_lua_stats(const lp_worker_t *ws, unsigned n, uint64_t out[3])
{
    out[0] = out[1] = out[2] = 0;
    for (unsigned i = 0; i < n; i++) {
        out[0] += __atomic_load_n(&ws[i].lua.pending, __ATOMIC_RELAXED);
        out[1] += __atomic_load_n(&ws[i].lua.running, __ATOMIC_RELAXED);
        out[2] += __atomic_load_n(&ws[i].lua.refused, __ATOMIC_RELAXED);
    }
}

void lp_workers_stats(const lp_worker_t *ws, unsigned n, uint64_t *conns, uint64_t *requests)
{
    *conns = *requests = 0;
    for (unsigned i = 0; i < n; i++) {
        *conns += __atomic_load_n(&ws[i].nconns, __ATOMIC_RELAXED);
        *requests += __atomic_load_n(&ws[i].requests, __ATOMIC_RELAXED);
    }
}
