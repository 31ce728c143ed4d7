#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <sys/socket.h>
#include "accesslog.h"
#include "conn.h"
#include "log.h"
#include "lua_vm.h"
#include "upstream.h"
#include "worker.h"

int lp_listener_open(uv_loop_t *loop, uv_tcp_t *tcp, const lp_listen_conf_t *lc, char *err,
                     size_t errlen)
{
    /* libuv (1.44) has no SO_REUSEPORT flag: make the socket ourselves and hand it over. */
    int fd = socket(lc->addr.addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(err, errlen, "listen %s: socket: %s", lc->addr.text, strerror(errno));
        return LP_EIO;
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)&lc->addr.addr, lc->addr.addrlen) < 0) {
        snprintf(err, errlen, "listen %s: bind: %s", lc->addr.text, strerror(errno));
        close(fd);
        return LP_EIO;
    }
    uv_tcp_init(loop, tcp);
    int rc = uv_tcp_open(tcp, fd);
    if (!rc)
        rc = uv_listen((uv_stream_t *)tcp, lc->backlog, lp_conn_on_connection);
    if (rc) {
        snprintf(err, errlen, "listen %s: %s", lc->addr.text, uv_strerror(rc));
        return LP_EIO;
    }
    return 0;
}

static void close_listeners(lp_worker_t *w)
{
    for (size_t i = 0; i < w->config->nlisten; i++) {
        lp_listener_t *l = &w->listeners[i];
        if (!l->closed && l->tcp.loop) {
            l->closed = 1;
            uv_close((uv_handle_t *)&l->tcp, NULL);
        }
    }
}

static void maybe_finish(lp_worker_t *w)
{
    if (!w->stopping)
        return;
    lp_upstream_close_idle(w);
    if (lp_list_empty(&w->conns)) {
        uv_timer_stop(&w->drain_timer);
        uv_close((uv_handle_t *)&w->drain_timer, NULL);
        uv_close((uv_handle_t *)&w->wakeup, NULL);
        uv_close((uv_handle_t *)&w->flush, NULL);
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
    if (w->stopping)
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
}

static void worker_main(void *arg)
{
    lp_worker_t *w = arg;
    lp_log_set_thread_id(w->id);
    uv_run(&w->loop, UV_RUN_DEFAULT);
    lp_accesslog_flush(w->access);
    lp_lua_close(w);
    /* Everything is closed: let the close callbacks run, then free. */
    uv_run(&w->loop, UV_RUN_DEFAULT);
    lp_lua_destroy(w);
    lp_upstream_rt_destroy(w);
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

static int worker_init(lp_worker_t *w, int id, const lp_config_t *config, char *err, size_t errlen)
{
    w->id = id;
    w->config = config;
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
    if ((rc = lp_upstream_rt_init(w))) {
        snprintf(err, errlen, "out of memory");
        return rc;
    }
    if ((rc = lp_lua_open(w, err, errlen)))
        return rc;
    w->listeners = calloc(config->nlisten, sizeof(*w->listeners));
    if (!w->listeners)
        return LP_ENOMEM;
    for (size_t i = 0; i < config->nlisten; i++) {
        w->listeners[i].w = w;
        if ((rc =
                 lp_listener_open(&w->loop, &w->listeners[i].tcp, &config->listen[i], err, errlen)))
            return rc;
        w->listeners[i].tcp.data = &w->listeners[i];
    }
    return 0;
}

int lp_workers_start(const lp_config_t *config, unsigned n, lp_worker_t **out, char *err,
                     size_t errlen)
{
    lp_worker_t *ws = calloc(n, sizeof(*ws));
    if (!ws)
        return LP_ENOMEM;
    for (unsigned i = 0; i < n; i++) {
        int rc = worker_init(&ws[i], (int)i + 1, config, err, errlen);
        if (!rc) {
            ws[i].access =
                lp_accesslog_open(config->access_log, config->access_format, err, errlen);
            if (config->access_log && !ws[i].access)
                rc = LP_EIO;
        }
        if (rc) {
            /* Nothing started yet: undo what was opened (the process exits anyway). */
            *out = NULL;
            return rc;
        }
    }
    for (unsigned i = 0; i < n; i++) {
        if (uv_thread_create(&ws[i].thread, worker_main, &ws[i])) {
            snprintf(err, errlen, "cannot start worker thread %u", i + 1);
            *out = ws;
            return LP_EIO;
        }
    }
    *out = ws;
    return 0;
}

void lp_workers_stop(lp_worker_t *ws, unsigned n)
{
    for (unsigned i = 0; i < n; i++)
        uv_async_send(&ws[i].wakeup);
    for (unsigned i = 0; i < n; i++) {
        uv_thread_join(&ws[i].thread);
        lp_accesslog_close(ws[i].access);
        free(ws[i].listeners);
    }
    free(ws);
}
