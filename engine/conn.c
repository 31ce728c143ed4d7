#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include "accesslog.h"
#include "compress.h"
#include "conn.h"
#include "cache_disk_hit.h"
#include "cache_native.h"
#include "cache_req.h"
#include "cache_store.h"
#include "proxy_proto.h"
#include "realip.h"
#include "errpage.h"
#include "h2.h"
#include "h2_util.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"
#include "relay.h"
#include "req_body.h"
#include "request.h"
#include "trace.h"
#include "route.h"
#include "rtable.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

/* What the connection timer is timing (after the endpoint's own modes). */
enum {
    TM_NONE = LP_EP_TM_NONE,
    TM_BROKEN = LP_EP_TM_BROKEN,
    TM_IDLE = LP_EP_TM_OWNER,
    TM_HEAD,
    TM_BODY,
    TM_SEND,
    TM_LINGER,
    TM_HANDSHAKE,
    TM_TUNNEL
};

#define LINGER_MS 2000

static void conn_process(lp_conn_t *c);
static void conn_update_reading(lp_conn_t *c);
static void conn_on_eof(lp_conn_t *c, ssize_t why);
static int conn_tls_fill(lp_conn_t *c);
static int req_finish(lp_req_t *req);
static int conn_local_done(lp_req_t *req);
static void conn_count(lp_req_t *req);

static const lp_timeouts_t *T(lp_conn_t *c)
{
    return &lp_ep_worker(&c->ep)->config->timeouts;
}

static void conn_timer(lp_conn_t *c, int mode, uint64_t ms)
{
    lp_ep_timer(&c->ep, mode, ms);
}

/* Bytes went through the tunnel, one way or the other: its idle time starts again. A send
 * stall's timer stays (conn_on_written puts this one back once the client reads). Moving a
 * deadline later is cheap (endpoint.c's heap keeps the old key until it comes up). */
static void conn_tunnel_touch(lp_conn_t *c)
{
    if (c->ep.tmode != TM_SEND)
        conn_timer(c, TM_TUNNEL, T(c)->tunnel);
}

static lp_conn_t *conn_of(lp_endpoint_t *ep)
{
    return LP_CONTAINER_OF(ep, lp_conn_t, ep);
}

static int on_req_body(lp_h1_t *h, const char *at, size_t len);

static const lp_down_ops_t h1_ops;

/* How the request's response reaches its client (conn.h): an HTTP/2 stream's or ours. */
static inline const lp_down_ops_t *down(const lp_req_t *req)
{
    return req->h2s ? &lp_h2_down_ops : &h1_ops;
}

/* ---- closing ---- */

static void conn_metrics(lp_req_t *req);
static int conn_cache_pump(lp_req_t *req);

static void conn_on_closed(lp_endpoint_t *ep)
{
    lp_conn_t *c = conn_of(ep);
    if (c->flags & LP_CF_H2)
        lp_h2_free(c);
    lp_list_remove(&c->link);
    __atomic_sub_fetch(&lp_ep_worker(&c->ep)->nconns, 1, __ATOMIC_RELAXED);
    free(c);
}

/* A request cut short with its connection (the client went away, an error closed it)
 * still gets its log phase, as nginx runs log_by_lua for every request: plugins give back
 * what earlier phases took (limit_conn's slot). Its upstream side ends first; the phase
 * runs detached, as a log phase that waits does. Not from inside another Lua call. */
static void conn_end_cut_short(lp_req_t *req)
{
    if ((req->flags & (LP_RF_PARSED | LP_RF_LOG_DONE)) != LP_RF_PARSED || lp_lua_busy() ||
        !lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_LOG)) {
        lp_req_end(req);
        return;
    }
    req->flags |= LP_RF_LOG_DONE;
    lp_upstream_try_end(req, 0);
    if (req->try.peer) {
        lp_peer_abort(req->try.peer);
        req->try.peer = NULL;
    }
    if (req->cache.fill) {
        /* Its fill gets no more bytes: the requests following it (fill streams) are cut
         * now, not when this one's log phase ends (review). */
        lp_cache_fill_abandon(req->cache.fill);
        req->cache.fill = NULL;
    }
    lp_req_detach(req);
    lp_req_hold(req);
    if (lp_lua_phase(req, LP_PHASE_LOG) != LP_AGAIN)
        lp_req_end(req);
    lp_req_let_go(req);
}

void lp_conn_req_cut(lp_req_t *req)
{
    int parsed = (req->flags & LP_RF_PARSED) != 0;
    if (req->resp.sent_status == 0 && parsed)
        req->resp.sent_status = 499; /* closed before the response: nginx's convention */
    if (parsed || req->resp.sent_status) {
        conn_metrics(req);
        lp_accesslog_write(req->w->access, req);
    }
    conn_end_cut_short(req);
}

void lp_conn_close(lp_conn_t *c)
{
    if (c->ep.flags & LP_EPF_CLOSING)
        return;
    if (c->flags & LP_CF_H2)
        lp_h2_close(c); /* every stream's request is cut */
    else if (c->req)
        lp_conn_req_cut(c->req);
    if (c->flags & LP_CF_HS_WAIT) {
        lp_ep_worker(&c->ep)->hs_q[c->hs_pos] = NULL; /* on_hs_idle skips the hole */
        c->flags &= (uint16_t)~LP_CF_HS_WAIT;
    }
    lp_ep_close(&c->ep);
}

static size_t ip_text(const uint8_t *a, int v6, char out[LP_IP_TEXT])
{
    if (v6) {
        if (uv_inet_ntop(AF_INET6, a, out, LP_IP_TEXT))
            out[0] = 0;
        return strlen(out);
    }
    if (!(a[0] | a[1] | a[2] | a[3])) {
        out[0] = 0; /* unknown (getpeername failed) */
        return 0;
    }
    /* IPv4 by hand: this runs for most proxied requests (X-Forwarded-For). */
    char *p = out;
    for (int i = 0; i < 4; i++) {
        unsigned v = a[i];
        if (v >= 100)
            *p++ = (char)('0' + v / 100);
        if (v >= 10)
            *p++ = (char)('0' + v / 10 % 10);
        *p++ = (char)('0' + v % 10);
        *p++ = '.';
    }
    p[-1] = 0;
    return (size_t)(p - 1 - out);
}

size_t lp_conn_ip_text(const lp_conn_t *c, char out[LP_IP_TEXT])
{
    return ip_text(c->client_addr, (c->flags & LP_CF_V6) != 0, out);
}

size_t lp_conn_peer_text(const lp_conn_t *c, char out[LP_IP_TEXT])
{
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    out[0] = 0;
    if (uv_tcp_getpeername(&c->ep.tcp, (struct sockaddr *)&ss, &len))
        return 0;
    if (ss.ss_family == AF_INET6)
        return ip_text((const uint8_t *)&((struct sockaddr_in6 *)&ss)->sin6_addr, 1, out);
    if (ss.ss_family == AF_INET)
        return ip_text((const uint8_t *)&((struct sockaddr_in *)&ss)->sin_addr, 0, out);
    return 0;
}

/* The client's address for a log line (valid until the next call on this thread). */
static const char *conn_ip(const lp_conn_t *c)
{
    static _Thread_local char text[LP_IP_TEXT];
    lp_conn_ip_text(c, text);
    return text;
}

static void on_linger_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    lp_conn_t *c = conn_of(s->data);
    if (nread < 0)
        lp_conn_close(c);
}

static void on_linger_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    /* Input after the answer is discarded: a small static sink is enough. */
    static _Thread_local char sink[4096];
    *buf = uv_buf_init(sink, sizeof(sink));
}

static void on_shutdown(uv_shutdown_t *sr, int status)
{
    lp_conn_t *c = sr->data;
    free(sr);
    if (c->ep.flags & LP_EPF_CLOSING)
        return;
    if (status < 0 || (c->flags & LP_CF_EOF)) {
        lp_conn_close(c);
        return;
    }
    /* Lingering close: the client may still be sending (a body we refused); closing with
     * unread input would reset the connection and could destroy our answer in flight. */
    c->flags |= LP_CF_LINGER;
    lp_ep_reading(&c->ep, 0);
    if (uv_read_start((uv_stream_t *)&c->ep.tcp, on_linger_alloc, on_linger_read))
        lp_conn_close(c);
    conn_timer(c, TM_LINGER, LINGER_MS);
}

/* Close once everything queued is written: shut down our side, then linger. */
static void conn_close_after_write(lp_conn_t *c)
{
    c->flags |= LP_CF_CLOSE_AFTER;
    lp_conn_flush(c);
    if (c->ep.out_pending || (c->ep.flags & LP_EPF_CLOSING) || (c->flags & LP_CF_LINGER))
        return;
    if (c->ep.tls && !(c->flags & LP_CF_TLS_BYE)) {
        /* Tell a TLS client the end is deliberate, then shut down once it is written. */
        c->flags |= LP_CF_TLS_BYE;
        lp_tls_close_notify(c->ep.tls);
        lp_conn_flush(c);
        if (c->ep.out_pending || (c->ep.flags & (LP_EPF_CLOSING | LP_EPF_BROKEN)))
            return;
    }
    if (!(c->flags & LP_CF_H2) && c->req && c->req->try.peer) {
        lp_peer_abort(c->req->try.peer);
        c->req->try.peer = NULL;
    }
    if ((c->flags & LP_CF_CLEAN_END) && !(c->ep.rbuf && c->ep.rpos < c->ep.rlen)) {
        lp_conn_close(c); /* everything is written: the kernel sends it, then FIN */
        return;
    }
    lp_ep_reading(&c->ep, 0);
    uv_shutdown_t *sr = malloc(sizeof(*sr));
    if (!sr || uv_shutdown(sr, (uv_stream_t *)&c->ep.tcp, on_shutdown)) {
        free(sr);
        lp_conn_close(c);
        return;
    }
    sr->data = c;
    c->flags |= LP_CF_LINGER;
}

void lp_conn_close_after_write(lp_conn_t *c)
{
    conn_close_after_write(c);
}

static void conn_on_timeout(lp_endpoint_t *ep, int mode)
{
    lp_conn_t *c = conn_of(ep);
    if (c->flags & LP_CF_H2) {
        lp_h2_timeout(c, mode);
        return;
    }
    if ((c->flags & LP_CF_PROXY_WAIT) && mode != TM_BROKEN) {
        lp_log_info("%s: no PROXY protocol header in time: closing", conn_ip(c));
        lp_conn_close(c);
        return;
    }
    switch (mode) {
    case TM_HEAD:
    case TM_BODY:
        if (c->req && !(c->req->flags & LP_RF_RESP_STARTED)) {
            lp_log_info("%s: client timed out sending the request %s", conn_ip(c),
                        mode == TM_HEAD ? "head" : "body");
            (void)lp_conn_upstream_failed(c->req, 408, "client timeout");
            return;
        }
        lp_conn_close(c);
        return;
    case TM_SEND:
        lp_log_info("%s: client timed out reading the response", conn_ip(c));
        lp_conn_close(c);
        return;
    case TM_HANDSHAKE:
        lp_log_info("%s: TLS handshake timed out", conn_ip(c));
        lp_conn_close(c);
        return;
    case TM_TUNNEL:
        lp_log_info("%s: upgraded connection idle for timeouts.tunnel: closing", conn_ip(c));
        lp_conn_close(c);
        return;
    case TM_BROKEN:
        lp_log_debug("%s: write failed%s%s", conn_ip(c), c->ep.tls ? ": " : "",
                     c->ep.tls ? lp_tls_error(c->ep.tls) : "");
        lp_conn_close(c);
        return;
    default:
        lp_conn_close(c); /* idle, or lingering, too long */
    }
}

/* ---- writing to the client ---- */

static void conn_on_written(lp_endpoint_t *ep, int status)
{
    lp_conn_t *c = conn_of(ep);
    if (status < 0) {
        lp_log_debug("%s: write failed: %s", conn_ip(c), uv_strerror(status));
        lp_conn_close(c);
        return;
    }
    if (c->flags & LP_CF_H2) {
        lp_h2_written(c);
        if (!c->ep.out_pending && (c->flags & LP_CF_CLOSE_AFTER) && !(c->ep.flags & LP_EPF_CLOSING))
            conn_close_after_write(c);
        return;
    }
    if (c->ep.tmode == TM_SEND) {
        if (c->ep.out_pending)
            conn_timer(c, TM_SEND, T(c)->send);
        else if (c->flags & LP_CF_TUNNEL)
            conn_timer(c, TM_TUNNEL, T(c)->tunnel);
        else
            conn_timer(c, TM_NONE, 0);
    }
    if (lp_relay_drained(&c->ep)) {
        lp_req_t *req = c->req;
        if (req && req->cache.left &&
            (req->flags & (LP_RF_RESP_STARTED | LP_RF_RESP_DONE)) == LP_RF_RESP_STARTED) {
            /* A hit's body waits for room: the next part goes, or the answer ends. Not before
             * its head went: a hit answered in the request phase (cache.left set) may still
             * wait for its response phase, after the previous response's drain. */
            lp_req_hold(req);
            conn_cache_pump(req);
            lp_req_drop(req);
            return;
        }
        if (req && req->try.peer && ((c->flags & LP_CF_TUNNEL) || !(req->flags & LP_RF_RESP_DONE)))
            lp_peer_resume(req->try.peer);
    }
    if (!c->ep.out_pending && (c->flags & LP_CF_CLOSE_AFTER))
        conn_close_after_write(c);
}

void lp_conn_flush(lp_conn_t *c)
{
    if (c->flags & LP_CF_H2) {
        lp_h2_flush(c);
        return;
    }
    if (lp_ep_flush(&c->ep))
        return;
    if (c->ep.out_pending > LP_HIGH_WATERMARK && c->ep.tmode != TM_SEND)
        conn_timer(c, TM_SEND, T(c)->send);
}

static int conn_respond_lua(lp_req_t *req);
static int conn_send_local(lp_req_t *req);
static int conn_cache_pump(lp_req_t *req);

/* Makes the proxy's own answer the request's response: the config's error page for the
 * status (the route's, else the global one), or a short text saying why (errpage.h). It
 * then takes the path of a req:respond() answer. -1 when out of memory. */
static int conn_set_local(lp_req_t *req, int status, const char *detail)
{
    lp_error_answer_t a;
    if (lp_errpage_answer(req->g->config, req->route, status, detail, &a))
        return -1;
    free(req->resp.local_body);
    req->resp.local_body = NULL;
    req->resp.local_body_len = 0;
    if (lp__resp_begin(req) ||
        (a.content_type && lp_ffi_header_set(req, 1, LP_FFI_HADD, "Content-Type", 12,
                                             a.content_type, strlen(a.content_type)))) {
        free(a.body);
        return -1;
    }
    req->resp.local_body = a.body; /* NULL when the status has no body (204, 304) */
    req->resp.local_body_len = a.len;
    req->resp.status = a.status;
    req->flags |= LP_RF_LOCAL;
    return 0;
}

/* The proxy's own answer (404, 413, 502, 503, 504...). It goes through the response and
 * log phases like any answer, unless the request's head never parsed (there is no
 * request to show plugins) or a Lua response phase just failed (no second try). The
 * connection stays open only when keep is set and nothing of the request is left unread.
 * LP_GONE when the request ended (it has, unless a phase waits). */
static int conn_respond_local(lp_req_t *req, int status, int keep, const char *detail)
{
    if (req->state != LP_RS_DONE || (req->flags & LP_RF_UPGRADE_REQ))
        keep = 0;
    if (!keep)
        req->flags |= LP_RF_RESP_CLOSE;
    if (conn_set_local(req, status, detail)) {
        down(req)->abort(req);
        return LP_GONE;
    }
    req->flags &= ~LP_RF_WAIT_UPSTREAM;
    if (!(req->flags & LP_RF_PARSED) || (req->flags & LP_RF_NO_LUA_RESP))
        return conn_send_local(req);
    return conn_respond_lua(req);
}

static int conn_response_end(lp_req_t *req);

/* The proxy's gRPC answer's fields as trailer text ("name: value\r\n"). */
typedef struct {
    char *text; /* owned until it becomes the response's trailers */
    size_t len;
} grpc_text_t;

static int grpc_trailer_add(void *ud, const char *name, size_t nlen, const char *value, size_t vlen)
{
    grpc_text_t *t = ud;
    return lp_h2_text_add(&t->text, &t->len, name, nlen, value, vlen);
}

/* A gRPC call whose response head went out can no longer say its failure in the head: when
 * the client takes trailers (an HTTP/2 stream, or a chunked HTTP/1.1 response) the body ends
 * there and grpc-status and grpc-message trailers say why (DEADLINE_EXCEEDED for a 504,
 * UNAVAILABLE for a 502: errpage.h), which gRPC clients read, where a reset would be a bare
 * CANCELLED or INTERNAL. Not when a response_body filter or a cache fill holds part of the
 * body, nor when the HTTP/2 head said a content-length (fewer DATA bytes than it said make
 * the stream malformed, RFC 9113 8.1.1): the reset stays. 1 when it ended the response (the
 * request is gone). */
static int conn_grpc_fail_trailers(lp_req_t *req, int status, const char *why)
{
    if (!(req->flags & LP_RF_GRPC) || (req->flags & LP_RF_RESP_LENGTH) ||
        (!req->h2s && !(req->flags & LP_RF_RESP_CHUNKED)) || req->cache.fill ||
        (req->flags & LP_RF_RESP_DONE) ||
        lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_BODY))
        return 0;
    grpc_text_t t = {NULL, 0};
    if (lp_errpage_grpc_fields(status, grpc_trailer_add, &t)) {
        free(t.text);
        return 0;
    }
    free(req->resp.trailers); /* none came before the failure, but be sure */
    req->resp.trailers = t.text;
    req->resp.trailers_len = t.len;
    req->resp.sent_status = status; /* the log and the metrics say what it stands for */
    lp_log_warn("%s: %s %.*s: %s after the response started; ending it with grpc-status %d%s",
                conn_ip(req->conn), llhttp_method_name(req->method), (int)req->h1.path.len,
                req->h1.path.base, why, lp_errpage_grpc_status(status), lp_trace_tag(req));
    (void)conn_response_end(req); /* LP_GONE: it ended or left the connection */
    return 1;
}

int lp_conn_upstream_failed(lp_req_t *req, int status, const char *why)
{
    lp_conn_t *c = req->conn;
    if (req->try.peer) {
        lp_peer_abort(req->try.peer);
        req->try.peer = NULL;
    }
    if (req->flags & LP_RF_RESP_STARTED) {
        if (conn_grpc_fail_trailers(req, status, why))
            return LP_GONE;
        /* Mid-response: closing (an HTTP/2 client: resetting its stream, the connection
         * going on) is the only way to show the client the truncation. */
        lp_log_warn("%s: %s %.*s: %s after the response started; %s%s", conn_ip(c),
                    llhttp_method_name(req->method), (int)req->h1.path.len, req->h1.path.base, why,
                    req->h2s ? "resetting the stream" : "closing", lp_trace_tag(req));
        req->flags |= LP_RF_RESP_CLOSE;
        down(req)->abort(req);
        return LP_GONE;
    }
    /* A 503 says why (no target, queue full): the client may wait and retry. Other
     * reasons (connect errors, certificate checks) stay in the error log. */
    return conn_respond_local(req, status, 0, status == 503 ? why : NULL);
}

/* ---- the request path ---- */

static int body_known_empty(const lp_req_t *req)
{
    return !(req->h1.flags & (LP_H1F_LENGTH | LP_H1F_CHUNKED)) ||
           ((req->h1.flags & LP_H1F_LENGTH) && req->h1.content_length == 0);
}

static int conn_after_lua(lp_req_t *req, int phase, lp_rc_t rc);

/* Routing is decided (by the config's route or by Lua): connect upstream. LP_GONE when
 * the request ended. */
static int conn_start_upstream(lp_req_t *req)
{
    if (!req->upstream) {
        if (body_known_empty(req))
            req->state = LP_RS_DONE; /* nothing left to read: keep-alive stays possible */
        if (req->route)
            lp_log_warn("%s: route %d chose no upstream (a handler or plugin must call "
                        "req:set_upstream(name), or req:respond() for a local answer: a "
                        "handler's return values are not an answer)%s",
                        lp_req_client_ip(req), req->route_index + 1, lp_trace_tag(req));
        return conn_respond_local(req, req->route ? 502 : 404, 1, NULL);
    }
    req->flags |= LP_RF_WAIT_UPSTREAM;
    if (req->state != LP_RS_DONE) /* req:body() may have read it all already */
        req->state = LP_RS_BODY;
    return lp_upstream_start(req);
}

/* Runs a Lua phase if the request's chain has one; LP_AGAIN means it was parked. */
static lp_rc_t conn_run_phase(lp_req_t *req, int phase)
{
    if (!lp_lua_wants(req->g->lua, req->route_index, phase))
        return LP_DECLINED;
    /* Ran already, or its only hook asked not to run for its own answer (a cache hit,
     * lp_ffi_cache_respond): the answer goes as it is. */
    if (phase == LP_PHASE_RESPONSE && (req->flags & LP_RF_NO_LUA_RESP))
        return LP_DECLINED;
    if (phase == LP_PHASE_RESPONSE)
        req->flags |= LP_RF_NO_LUA_RESP; /* once: an answer replacing this one goes as is */
    /* The cache plugin's common hit and miss, run by the engine when the route allows it. */
    int nrc = phase == LP_PHASE_REQUEST ? lp_cache_native_request(req) : 1;
    if (nrc == 2)
        return LP_DONE; /* answered from the entry */
    if (!nrc || (phase == LP_PHASE_RESPONSE && !lp_cache_native_response(req)))
        return LP_DECLINED;
    return lp_lua_phase(req, phase);
}

/* At most this many lines of the real_ip header are read; more give no address (the
 * connection's is kept). */
#define REALIP_MAX_LINES 16

/* real_ip (docs/real-ip.md): when the connection's address is a trusted proxy of the
 * listener it came in on (as the request's generation configures it), the client address
 * is the one the header names. Run once the head is parsed, before any Lua: what plugins
 * change in the headers afterwards cannot move it. A listener the generation no longer
 * has has no real_ip. */
static void conn_real_ip(lp_req_t *req, lp_ip_t *client)
{
    lp_conn_t *c = req->conn;
    memset(client, 0, sizeof(*client));
    memcpy(client->addr, c->client_addr, 16);
    client->v6 = (c->flags & LP_CF_V6) != 0;
    const lp_gen_t *gen = req->g->gen;
    const lp_listen_conf_t *lc = NULL;
    for (size_t i = 0; i < gen->config->nlisten; i++)
        if ((uint16_t)gen->bound[i].id == c->listen_tag) {
            lc = &gen->config->listen[i];
            break;
        }
    if (!lc || !lc->ntrusted)
        return;
    if (!lp_cidr_match(lc->trusted, lc->ntrusted, client))
        return; /* not a trusted proxy: whatever its headers say is ignored */
    lp_str_t lines[REALIP_MAX_LINES];
    size_t n = 0, nlen = strlen(lc->realip_header);
    const lp_h1_t *h = &req->h1;
    for (unsigned i = 0; i < h->nheaders; i++) {
        if (!lp_str_ieq(h->headers[i].name, lc->realip_header, nlen))
            continue;
        if (n == REALIP_MAX_LINES)
            return;
        lines[n++] = h->headers[i].value;
    }
    lp_ip_t ip;
    if (lp_realip_walk(lc->realip_kind, lines, n, lc->trusted, lc->ntrusted, &ip)) {
        lp_ip_text(&ip, req->client_ip);
        *client = ip;
    }
}

/* The config route of a parsed head (NULL: none); its captures go to req->params. The
 * client address is the real one (real_ip), else the connection's peer. *failed is set
 * when a route's Lua predicate failed (the request fails with 500, on that route). */
static const lp_route_conf_t *route_request(lp_conn_t *c, lp_req_t *req, const lp_ip_t *client,
                                            int *failed)
{
    lp_str_t sni = {NULL, 0};
    if (c->ep.tls) {
        char scratch[8];
        size_t n = 0;
        const char *v = lp_tls_fact(c->ep.tls, LP_TLS_F_SNI, scratch, sizeof(scratch), &n);
        if (v)
            sni = (lp_str_t){v, strlen(v)};
    }
    int family = 0;
    for (size_t i = 0; i < sizeof(client->addr) && !family; i++)
        if (client->addr[i])
            family = client->v6 ? 6 : 4; /* all zero: unknown (getpeername failed) */
    lp_route_in_t in;
    lp_route_input(&in, &req->h1, family, client->addr, sni);
    lp_route_out_t out;
    /* The worker's current table for this generation (an admin change swaps it); the request
     * keeps it until it ends, as its route and captures point into it. */
    lp_rtable_t *t = req->g->rtable;
    lp_rtable_ref(t);
    req->rtable = t;
    for (int from = 0;;) {
        int i = lp_router_match(t->router, &in, from, &out);
        req->nparams = 0;
        req->route_index = -1;
        if (i < 0)
            break;
        req->route_index = t->conf_index[i];
        for (unsigned k = 0; k < out.ncaps && k < LP_ARRAY_LEN(req->params); k++)
            req->params[req->nparams++] = out.caps[k];
        if (!out.predicate)
            return t->routes[i];
        /* The Lua predicate decides last, on a handle made for this route (its params). */
        int ok = req->route_index >= 0 ? lp_lua_route_predicate(req) : -1;
        if (ok > 0)
            return t->routes[i];
        if (ok < 0) {
            *failed = 1;
            return t->routes[i];
        }
        from = i + 1;
    }
    req->rtable = NULL;
    lp_rtable_unref(t);
    return NULL;
}

/* The request head is parsed: limits, route, then the request phase. LP_GONE when the
 * request ended. */
static int conn_on_head(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    lp_h1_t *h = &req->h1;
    const lp_config_t *cfg = req->g->config;
    req->flags |= LP_RF_PARSED;
    req->method = lp_h1_method(h);
    req->minor = (uint8_t)lp_h1_minor(h);
    if (req->method == HTTP_HEAD)
        req->flags |= LP_RF_HEAD;
    if (h->flags & LP_H1F_UPGRADE)
        req->flags |= LP_RF_UPGRADE_REQ;
    const lp_header_t *ct = lp_h1_find(h, "content-type", 12);
    if (ct && ct->value.len >= 16 &&
        lp_str_ieq((lp_str_t){ct->value.base, 16}, "application/grpc", 16))
        req->flags |= LP_RF_GRPC; /* also application/grpc+proto and the like */
    lp_trace_start(req);          /* before anything may answer: a 413 has its trace too */
    if (!req->h2s)
        conn_timer(c, TM_NONE, 0); /* an HTTP/2 connection's timer is the session's */
    lp_ip_t client;
    conn_real_ip(req, &client);
    /* A declared length over the limit is refused once the request phase is over (a
     * plugin may set this request's own limit): no body byte is read before that. */
    req->body_limit = cfg->limits.max_body_size;
    int pred_failed = 0;
    /* and route_index: the config route */
    req->route = route_request(c, req, &client, &pred_failed);
    if (req->route && req->route->has_upstream)
        req->upstream = &req->g->upstreams[req->route->upstream];
    if (pred_failed) {
        req->flags |= LP_RF_WAIT_UPSTREAM;
        return conn_after_lua(req, LP_PHASE_REQUEST, LP_ERROR);
    }
    /* Parsing stays parked while Lua decides. */
    req->flags |= LP_RF_WAIT_UPSTREAM;
    lp_rc_t rc = conn_run_phase(req, LP_PHASE_REQUEST);
    if (rc == LP_AGAIN)
        return LP_OK;
    return conn_after_lua(req, LP_PHASE_REQUEST, rc == LP_DECLINED ? LP_OK : rc);
}

int lp_conn_req_head(lp_req_t *req)
{
    lp_req_hold(req);
    conn_on_head(req);
    return lp_req_let_go(req);
}

int lp_conn_upstream_ready(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    req->flags &= ~LP_RF_WAIT_UPSTREAM;
    if (req->h2s) {
        lp_req_hold(req);
        down(req)->pump(req);
        return lp_req_let_go(req);
    }
    if ((req->h1.flags & LP_H1F_EXPECT_100) && !(req->flags & LP_RF_SENT_100) &&
        req->state == LP_RS_BODY && req->body_in == 0 &&
        ((req->h1.flags & LP_H1F_CHUNKED) || req->h1.content_length > 0)) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        lp_wbatch_t *wb = lp_ep_outb(&c->ep, 1, 0);
        if (wb) {
            lp_wbatch_add(wb, cont, sizeof(cont) - 1, NULL);
            req->flags |= LP_RF_SENT_100;
            lp_conn_flush(c);
        }
    }
    lp_req_hold(req);
    conn_process(c);
    return lp_req_let_go(req);
}

void lp_conn_resume_body(lp_req_t *req)
{
    if (!(req->flags & LP_RF_READ_PAUSED))
        return;
    req->flags &= ~LP_RF_READ_PAUSED;
    down(req)->pump(req);
}

/* req:body(): the request body is gathered (before any upstream) until it is complete or
 * passes the caller's limit; the Lua phase waiting for it resumes then. What was gathered
 * goes upstream first (lp_conn_take_body), the rest streams as usual. Returns
 * LP_H1_CB_PAUSE when gathering stops at the caller's limit (the span is kept whole:
 * parsing stops behind it and what follows stays for the upstream) and conn_parse wakes
 * the Lua phase; -1 when out of memory (the request fails with 500). */
static int conn_buffer_body(lp_req_t *req, const char *at, size_t len)
{
    lp_buf_t *b = req->body_buf;
    size_t used = req->body_len;
    if (!b || len > b->cap - used) {
        size_t cap = b ? b->cap : LP_BUF_SMALL;
        while (cap < used + len && cap <= SIZE_MAX / 2)
            cap *= 2;
        lp_buf_t *nb = cap >= used + len ? lp_buf_get(&req->w->bufs, cap) : NULL;
        if (!nb) {
            /* The span cannot be kept (it counts as parsed): the request fails whole. */
            req->h1.err_status = 500;
            req->h1.err_reason = "out of memory gathering the body";
            return -1;
        }
        if (b) {
            memcpy(nb->data, b->data, used);
            lp_buf_unref(b);
        }
        req->body_buf = b = nb;
    }
    memcpy(b->data + used, at, len);
    req->body_len = used + len;
    if (req->body_len > req->body_max) {
        /* Over the caller's limit: stop here (parsing waits for the upstream) and say so. */
        req->flags &= ~LP_RF_BODY_BUFFERING;
        req->flags |= LP_RF_BODY_TOOBIG | LP_RF_BODY_WAKE;
        return LP_H1_CB_PAUSE;
    }
    return 0;
}

int lp_conn_read_body(lp_req_t *req, uint64_t max)
{
    if (req->state == LP_RS_DONE || body_known_empty(req))
        return LP_OK;
    if (req->flags & LP_RF_BODY_TOOBIG)
        return LP_ERROR;
    if ((req->h1.flags & LP_H1F_LENGTH) && req->h1.content_length > max)
        return LP_ERROR;
    req->body_max = max;
    req->flags |= LP_RF_BODY_BUFFERING;
    if (req->state == LP_RS_HEAD)
        req->state = LP_RS_BODY;
    if ((req->h1.flags & LP_H1F_EXPECT_100) && !(req->flags & LP_RF_SENT_100) && !req->h2s) {
        static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
        lp_wbatch_t *wb = lp_ep_outb(&req->conn->ep, 1, 0);
        if (wb) {
            lp_wbatch_add(wb, cont, sizeof(cont) - 1, NULL);
            req->flags |= LP_RF_SENT_100;
            lp_conn_flush(req->conn);
        }
    }
    return LP_AGAIN; /* lp_conn_kick() once Lua has yielded: parsing goes on then */
}

void lp_conn_kick(lp_conn_t *c)
{
    if (!(c->ep.flags & LP_EPF_CLOSING))
        conn_process(c);
}

void lp_conn_kick_req(lp_req_t *req)
{
    if (req->conn && !(req->conn->ep.flags & LP_EPF_CLOSING))
        down(req)->pump(req);
}

void lp_conn_take_body(lp_req_t *req, lp_buf_t **buf, size_t *len)
{
    *buf = req->body_buf;
    *len = req->body_len;
}

void lp_conn_give_body_back(lp_req_t *req, lp_buf_t *b, size_t len)
{
    if (req->body_buf)
        lp_buf_unref(req->body_buf); /* a prefix of b's bytes */
    req->body_buf = b;
    req->body_len = len;
}

int lp_conn_req_body(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin)
{
    uint64_t max = req->body_limit;
    req->body_in += len;
    if (max && req->body_in > max)
        return 413; /* chunked bodies learn their size as they go: stop past the limit */
    lp_req_body_tee(req, at, len);
    if (lp_req_body_replaced(req))
        return 0; /* req:set_body(): its replacement went upstream; these bytes are dropped */
    if (req->try.peer)
        lp_peer_body(req->try.peer, at, len, pin, (req->h1.flags & LP_H1F_CHUNKED) != 0);
    else if (req->flags & LP_RF_BODY_BUFFERING)
        return conn_buffer_body(req, at, len);
    return 0;
}

static int on_req_body(lp_h1_t *h, const char *at, size_t len)
{
    lp_req_t *req = h->ud;
    int rc = lp_conn_req_body(req, at, len, req->conn->ep.rbuf);
    if (rc == 413) {
        llhttp_set_error_reason(&h->parser, "request body too large");
        h->err_status = 413;
        /* (the bad-request log line says which limit) */
        h->err_reason = "request body over max_body_size (limits or request_limits)";
        return 0;
    }
    return rc;
}

/* A req:body() wait is over (the body is complete, or gathering stopped): the Lua phase
 * goes on, outside the parser's callbacks. */
static void conn_wake_body(lp_req_t *req)
{
    req->flags &= ~(LP_RF_BODY_BUFFERING | LP_RF_BODY_WAKE);
    lp_lua_wake(req);
}

int lp_conn_req_body_end(lp_req_t *req)
{
    req->state = LP_RS_DONE;
    if (req->try.peer && !lp_req_body_replaced(req)) {
        lp_peer_body_end(req->try.peer, (req->h1.flags & LP_H1F_CHUNKED) != 0);
        lp_peer_flush(req->try.peer);
    }
    if (req->flags & (LP_RF_BODY_BUFFERING | LP_RF_BODY_WAKE)) {
        conn_wake_body(req);
        return LP_OK;
    }
    if (req->flags & LP_RF_RESP_DONE)
        return req_finish(req);
    return LP_OK;
}

/* One step of request parsing; the caller holds req. Returns 0 to go on (the request may
 * have ended: look at c->req again), -1 to stop the loop. */
static int conn_parse(lp_conn_t *c, lp_req_t *req)
{
    size_t used = 0;
    lp_h1_event_t ev = c->ep.rbuf ? lp_h1_execute(&req->h1, c->ep.rbuf->data + c->ep.rpos,
                                                  c->ep.rlen - c->ep.rpos, &used)
                                  : lp_h1_execute(&req->h1, "", 0, &used);
    c->ep.rpos += (uint32_t)used;
    if (req->h1.err_status == 413 && ev != LP_H1_ERROR)
        ev = LP_H1_ERROR;
    if (req->try.peer)
        lp_peer_flush(req->try.peer);
    switch (ev) {
    case LP_H1_NEED_MORE:
        if (req->state == LP_RS_BODY)
            conn_timer(c, TM_BODY, T(c)->client_body);
        return 0;
    case LP_H1_PAUSED:
        lp_h1_resume(&req->h1);
        if (req->flags & LP_RF_BODY_WAKE)
            conn_wake_body(req);
        return 0;
    case LP_H1_HEAD:
        lp_h1_resume(&req->h1);
        conn_on_head(req);
        return 0;
    case LP_H1_DONE:
    case LP_H1_UPGRADE:
        if (ev == LP_H1_DONE)
            lp_h1_resume(&req->h1);
        req->state = LP_RS_DONE;
        if ((c->flags & LP_CF_EOF) && !(req->flags & LP_RF_RESP_DONE) &&
            req->g->config->client_abort_close) {
            /* client_abort = "close", and the client's FIN came before the end of its
             * request was parsed (conn_on_eof left the decision here): it is gone. */
            lp_conn_close(c);
            return -1;
        }
        if (c->ep.tmode == TM_BODY)
            conn_timer(c, TM_NONE, 0);
        if (req->try.peer && !lp_req_body_replaced(req)) {
            lp_peer_body_end(req->try.peer, (req->h1.flags & LP_H1F_CHUNKED) != 0);
            lp_peer_flush(req->try.peer);
        }
        if (req->flags & LP_RF_BODY_BUFFERING) {
            conn_wake_body(req);
            return 0;
        }
        if (req->flags & LP_RF_RESP_DONE)
            req_finish(req);
        return 0;
    case LP_H1_ERROR:
    default:
        lp_log_info("%s: bad request: %d %s", conn_ip(c), req->h1.err_status,
                    req->h1.err_reason ? req->h1.err_reason : "");
        lp_conn_upstream_failed(req, req->h1.err_status ? req->h1.err_status : 400, "bad request");
        return -1;
    }
}

static void conn_process_once(lp_conn_t *c)
{
    for (;;) {
        if ((c->ep.flags & LP_EPF_CLOSING) ||
            (c->flags & (LP_CF_CLOSE_AFTER | LP_CF_LINGER | LP_CF_TUNNEL)))
            return;
        lp_req_t *req = c->req;
        int have = c->ep.rbuf && c->ep.rpos < c->ep.rlen;
        if (!req) {
            /* TLS decrypts only when the parser wants input: a failed SSL_read costs. */
            if (!have && !(have = conn_tls_fill(c)))
                return;
            if (c->ep.flags & LP_EPF_CLOSING)
                return;
            /* Draining: a request that arrived is served all the same (answered with
             * Connection: close), rather than closed unanswered: its client cannot tell
             * a close from a failure on a connection's first request. */
            req = c->req = lp_req_new(lp_ep_worker(&c->ep), c);
            if (!req) {
                lp_conn_close(c);
                return;
            }
            req->h1.on_body = on_req_body;
            conn_timer(c, TM_HEAD, T(c)->client_header);
        }
        if (req->state == LP_RS_DONE || ((req->flags & (LP_RF_WAIT_UPSTREAM | LP_RF_READ_PAUSED)) &&
                                         !(req->flags & LP_RF_BODY_BUFFERING)))
            return;
        if (!have && !req->h1.after_head && (c->flags & LP_CF_EOF) && !c->ep.tls) {
            /* Everything the client sent before its FIN is parsed, and the request is not
             * whole (conn_on_eof left the decision here): it cannot be answered. */
            lp_conn_close(c);
            return;
        }
        /* After the head, the parser has to run once more even without input: a message
         * without a body completes only then (and before anything more is decrypted, or a
         * close_notify right behind a bodiless request would end it before it is done). */
        if (!have && !req->h1.after_head && (!conn_tls_fill(c) || (c->ep.flags & LP_EPF_CLOSING)))
            return;
        lp_req_hold(req);
        int stop = conn_parse(c, req);
        lp_req_drop(req);
        if (stop)
            return;
        /* The request may have ended by now: look again. */
        req = c->req;
        if (req && req->try.peer && lp_peer_full(req->try.peer) && req->state == LP_RS_BODY) {
            req->flags |= LP_RF_READ_PAUSED;
            if (c->ep.tmode == TM_BODY)
                conn_timer(c, TM_NONE, 0);
        }
    }
}

/* Parses what can be parsed now. Re-entrant calls (an upstream that is ready at once,
 * a request finished inside the loop) only ask the running loop for another pass. */
static void conn_process(lp_conn_t *c)
{
    if (c->flags & LP_CF_H2)
        return; /* its streams' requests move through h2.c */
    if (c->flags & LP_CF_BUSY) {
        c->flags |= LP_CF_AGAIN;
        return;
    }
    c->flags |= LP_CF_BUSY;
    do {
        c->flags &= ~LP_CF_AGAIN;
        conn_process_once(c);
    } while ((c->flags & LP_CF_AGAIN) && !(c->ep.flags & LP_EPF_CLOSING));
    c->flags &= ~LP_CF_BUSY;
    conn_update_reading(c);
}

/* ---- reading from the client ---- */

/* TLS: decrypts buffered input into the read block. 1 when there is new plaintext. */
static int conn_tls_fill(lp_conn_t *c)
{
    int err;
    int rc = lp_ep_tls_fill(&c->ep, &err);
    if (rc >= 0)
        return rc;
    if (err)
        lp_log_info("%s: TLS error: %s", conn_ip(c), lp_tls_error(c->ep.tls));
    conn_on_eof(c, err ? err : UV_EOF);
    return 0;
}

/* The upstream side of the tunnel, when there is one. */
static lp_endpoint_t *conn_tunnel_peer(lp_conn_t *c)
{
    return c->req && c->req->try.peer ? &c->req->try.peer->ep : NULL;
}

/* Tunnel: what the client sent goes to the upstream while it keeps up (over TLS,
 * decrypting as it goes). */
static void conn_tunnel_pump(lp_conn_t *c)
{
    lp_endpoint_t *up;
    while (!(c->ep.flags & LP_EPF_CLOSING) && (up = conn_tunnel_peer(c)) && !lp_relay_full(up)) {
        if (!(c->ep.rbuf && c->ep.rpos < c->ep.rlen) && !conn_tls_fill(c))
            break;
        if (!(up = conn_tunnel_peer(c)))
            break;
        lp_relay_move(&c->ep, up);
        conn_tunnel_touch(c);
    }
    lp_conn_flush(c);
}

/* A plain-HTTP request on a TLS port: answered in plain text, as nginx does, and closed. */
static void conn_plain_on_tls(lp_conn_t *c)
{
    static const char body[] = "400 Bad Request: this port speaks HTTPS; the request was plain "
                               "HTTP.\n";
    char head[256];
    lp_log_info("%s: plain HTTP request on a TLS port: 400, closing", conn_ip(c));
    lp_tls_free(c->ep.tls);
    c->ep.tls = NULL;
    int n = snprintf(head, sizeof(head),
                     "HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                     sizeof(body) - 1);
    lp_wbatch_t *wb = lp_ep_outb(&c->ep, 2, (unsigned)n);
    if (!wb) {
        lp_conn_close(c);
        return;
    }
    lp_wbatch_add_copy(wb, head, (size_t)n);
    lp_wbatch_add(wb, body, sizeof(body) - 1, NULL);
    conn_close_after_write(c);
}

/* When a handshake ends with the client's flight (a TLS 1.2 resumption), we have nothing
 * to send that would carry its ACK: the client's request, held back by Nagle until that
 * ACK, would wait for our delayed ACK (40 ms). Acknowledge at once instead. */
static void conn_quickack(lp_conn_t *c)
{
    uv_os_fd_t fd;
    int one = 1;
    if (uv_fileno((uv_handle_t *)&c->ep.tcp, &fd) == 0)
        (void)setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof(one));
}

/* Handshake time one loop turn may spend before further handshakes wait for the next
 * turn: a full RSA-2048 handshake costs about 1 ms, so a burst of 50 new connections would
 * otherwise hold back every established connection's request for 50 ms (nginx gets the
 * same effect by accepting one connection per turn). */
#define HS_BUDGET_NS 1000000

static void conn_tls_step(lp_conn_t *c);

static void on_hs_idle(uv_idle_t *h)
{
    lp_worker_t *w = h->data;
    w->hs_turn_ns = 0;
    while (w->hs_first < w->hs_n && w->hs_turn_ns < HS_BUDGET_NS) {
        lp_conn_t *c = w->hs_q[w->hs_first++];
        if (!c)
            continue; /* closed while it waited */
        c->flags &= (uint16_t)~LP_CF_HS_WAIT;
        c->nrequests = 0; /* hs_pos is done with (its union's other half) */
        conn_tls_step(c);
    }
    if (w->hs_first == w->hs_n) {
        w->hs_first = w->hs_n = 0;
        uv_idle_stop(h);
    }
}

/* Queues c at the end of w->hs_q. The array is reused from its start whenever it empties,
 * and compacted when its consumed head is the larger part, so a steady flood of
 * handshakes does not grow it without bound. -1 when out of memory. */
static int hs_push(lp_worker_t *w, lp_conn_t *c)
{
    if (w->hs_n == w->hs_cap && w->hs_first >= w->hs_n / 2 && w->hs_first) {
        uint32_t k = 0;
        for (uint32_t i = w->hs_first; i < w->hs_n; i++) {
            lp_conn_t *q = w->hs_q[i];
            if (!q)
                continue;
            q->hs_pos = k;
            w->hs_q[k++] = q;
        }
        w->hs_first = 0;
        w->hs_n = k;
    }
    if (w->hs_n == w->hs_cap) {
        uint32_t cap = w->hs_cap ? 2 * w->hs_cap : 64;
        lp_conn_t **q = realloc(w->hs_q, cap * sizeof(*q));
        if (!q)
            return -1;
        w->hs_q = q;
        w->hs_cap = cap;
    }
    c->hs_pos = w->hs_n;
    w->hs_q[w->hs_n++] = c;
    c->flags |= LP_CF_HS_WAIT;
    return 0;
}

/* Whether this handshake step waits for a later turn (queued, oldest first). Only the
 * first step, the ClientHello (a signature, the expensive part), ever waits: a handshake
 * under way finishes at once, and so does the request that follows it. */
static int conn_hs_defer(lp_conn_t *c)
{
    lp_worker_t *w = lp_ep_worker(&c->ep);
    if (c->flags & LP_CF_HS_WAIT)
        return 1; /* already waiting: more of its bytes arrived */
    if (lp_tls_started(c->ep.tls))
        return 0;
    if (w->hs_first == w->hs_n && w->hs_turn_ns < HS_BUDGET_NS)
        return 0;
    if (hs_push(w, c))
        return 0; /* out of memory: handshake now rather than stall it */
    uv_idle_start(&w->hs_idle, on_hs_idle);
    return 1;
}

/* Ciphertext arrived (the endpoint gave it to the session): handshake, then the same path
 * as plain input. */
static void conn_tls_input(lp_conn_t *c)
{
    if (!lp_tls_established(c->ep.tls) && lp_tls_first_byte(c->ep.tls) == 0x16 && conn_hs_defer(c))
        return;
    conn_tls_step(c);
}

/* The client chose h2 by ALPN (offered only on an http2 listener). */
static int conn_alpn_h2(lp_conn_t *c)
{
    char scratch[8];
    size_t n = 0;
    const char *v = lp_tls_fact(c->ep.tls, LP_TLS_F_ALPN, scratch, sizeof(scratch), &n);
    return v && n == 2 && v[0] == 'h' && v[1] == '2';
}

static void conn_tls_step(lp_conn_t *c)
{
    if (!lp_tls_established(c->ep.tls)) {
        if (lp_tls_first_byte(c->ep.tls) != 0x16) { /* not a TLS handshake record */
            conn_plain_on_tls(c);
            return;
        }
        uint64_t t0 = uv_hrtime();
        int rc = lp_tls_handshake(c->ep.tls);
        lp_ep_worker(&c->ep)->hs_turn_ns += uv_hrtime() - t0;
        lp_conn_flush(c);
        if (rc == LP_ERROR) {
            lp_log_info("%s: TLS handshake failed: %s", conn_ip(c), lp_tls_error(c->ep.tls));
            conn_close_after_write(c);
            return;
        }
        if (rc == LP_AGAIN || (c->ep.flags & (LP_EPF_CLOSING | LP_EPF_BROKEN)))
            return;
        lp_worker_t *w = lp_ep_worker(&c->ep);
        LP_M_ADD(&w->m_cells[LP_WM_TLS_HANDSHAKES], 1);
        if (lp_tls_resumed(c->ep.tls))
            LP_M_ADD(&w->m_cells[LP_WM_TLS_RESUMED], 1);
        conn_quickack(c);
        conn_timer(c, TM_IDLE, T(c)->client_header);
        if (conn_alpn_h2(c) && lp_h2_start(c)) {
            lp_conn_close(c);
            return;
        }
    }
    if (c->flags & LP_CF_H2)
        lp_h2_input(c);
    else if (c->flags & LP_CF_TUNNEL)
        conn_tunnel_pump(c);
    else
        conn_process(c);
    if (!(c->ep.flags & LP_EPF_CLOSING)) {
        lp_conn_flush(c); /* what reading produced: tickets, key updates, alerts */
        lp_ep_release_rbuf(&c->ep);
        if (c->ep.tls)
            lp_tls_in_trim(c->ep.tls);
    }
}

/* The client's input ended (why: UV_EOF or an error). */
static void conn_on_eof(lp_conn_t *c, ssize_t why)
{
    c->flags |= LP_CF_EOF;
    if (why != UV_EOF)
        lp_log_debug("%s: read error: %s", conn_ip(c), uv_strerror((int)why));
    if (c->flags & LP_CF_H2) {
        lp_conn_close(c); /* its open streams are cut: an HTTP/2 client never half-closes */
        return;
    }
    if ((c->flags & LP_CF_TUNNEL) && c->req && c->req->try.peer) {
        lp_peer_tunnel_eof(c->req->try.peer);
        return;
    }
    if (c->req && c->req->state == LP_RS_DONE && why == UV_EOF) {
        if (c->req->g && c->req->g->config->client_abort_close &&
            !(c->req->flags & LP_RF_DETACHED)) {
            /* client_abort = "close": taken as gone, as nginx does (499). */
            lp_conn_close(c);
            return;
        }
        /* A half-close after a complete request: the answer still goes out. */
        conn_update_reading(c);
        return;
    }
    if (c->req && why == UV_EOF && !c->ep.tls &&
        (c->req->flags & (LP_RF_WAIT_UPSTREAM | LP_RF_READ_PAUSED))) {
        /* Parsing waits (for the upstream, or for it to drain), so the end of the request
         * may still be in the read block, or due from the parser's last pass after a head
         * without a body: whether the request was whole is known once that input is
         * parsed (conn_process_once), not now. */
        conn_update_reading(c);
        return;
    }
    /* Idle, a partial head, or a body cut short: nothing more can be answered. */
    lp_conn_close(c);
}

/* LP_CF_PROXY_WAIT: the header is read plain, before anything else (TLS included). Once
 * it is whole, the connection's client is its source, and what follows it goes on as the
 * connection's first bytes: to the TLS session it waited with, or to the HTTP parser. A
 * missing or malformed header closes the connection. */
static void conn_proxy_header(lp_conn_t *c)
{
    lp_endpoint_t *ep = &c->ep;
    lp_pp_t pp;
    ssize_t n = lp_pp_parse((const uint8_t *)ep->rbuf->data + ep->rpos, ep->rlen - ep->rpos, &pp);
    if (n == 0)
        return; /* incomplete: the timer armed at accept bounds the wait */
    if (n < 0) {
        lp_log_info("%s: missing or malformed PROXY protocol header: closing", conn_ip(c));
        lp_conn_close(c);
        return;
    }
    ep->rpos += (uint32_t)n;
    c->flags &= (uint16_t)~LP_CF_PROXY_WAIT;
    if (pp.has_addr) {
        memset(c->client_addr, 0, sizeof(c->client_addr));
        memcpy(c->client_addr, pp.src.addr, pp.src.v6 ? 16 : 4);
        if (pp.src.v6)
            c->flags |= LP_CF_V6;
        else
            c->flags &= (uint16_t)~LP_CF_V6;
    }
    ep->flags &= (uint16_t)~LP_EPF_RAW_IN;
    if (!ep->tls) {
        if (ep->rpos < ep->rlen)
            conn_process(c);
        if (!(ep->flags & LP_EPF_CLOSING))
            lp_ep_release_rbuf(ep);
        return;
    }
    /* The bytes behind the header are the start of the TLS handshake: into the session. */
    size_t left = ep->rlen - ep->rpos;
    int fed = left > 0;
    while (left) {
        uv_buf_t room = lp_tls_in_space(ep->tls);
        if (!room.len) {
            lp_conn_close(c); /* more than a ClientHello before our answer: not a client */
            return;
        }
        size_t k = left < room.len ? left : room.len;
        memcpy(room.base, ep->rbuf->data + ep->rpos, k);
        lp_tls_in_commit(ep->tls, k);
        ep->rpos += (uint32_t)k;
        left -= k;
    }
    lp_ep_release_rbuf(ep);
    if (fed)
        conn_tls_input(c);
}

static void conn_on_input(lp_endpoint_t *ep, ssize_t nread)
{
    lp_conn_t *c = conn_of(ep);
    if (c->flags & LP_CF_PROXY_WAIT) {
        if (nread > 0)
            conn_proxy_header(c);
        else
            lp_conn_close(c); /* gone before saying who it is for */
        return;
    }
    if (nread > 0 && c->ep.tls) {
        conn_tls_input(c);
        return;
    }
    if (nread > 0 && (c->flags & LP_CF_H2C) && !c->req) {
        /* An h2c listener: the HTTP/2 preface (prior knowledge) or HTTP/1.1. */
        int pre = lp_h2_is_preface(c->ep.rbuf->data + c->ep.rpos, c->ep.rlen - c->ep.rpos);
        if (pre < 0)
            return; /* too few bytes to tell: wait for more (the idle timer bounds it) */
        c->flags &= (uint16_t)~LP_CF_H2C;
        if (pre && lp_h2_start(c)) {
            lp_conn_close(c);
            return;
        }
    }
    if (nread > 0 && (c->flags & LP_CF_H2)) {
        lp_h2_input(c);
        if (!(c->ep.flags & LP_EPF_CLOSING))
            lp_ep_release_rbuf(&c->ep);
        return;
    }
    if (nread > 0) {
        if (c->ep.rlen == (uint32_t)nread && c->nrequests == 0 && !c->req &&
            c->ep.rbuf->data[0] == 0x16) {
            /* A TLS ClientHello: no HTTP answer would make sense to that client. */
            lp_log_info("%s: TLS handshake on a plain HTTP port: closing", conn_ip(c));
            lp_conn_close(c);
            return;
        }
        if (c->flags & LP_CF_TUNNEL) {
            lp_endpoint_t *up = conn_tunnel_peer(c);
            if (up)
                lp_relay_move(&c->ep, up);
            conn_tunnel_touch(c);
            conn_update_reading(c);
        } else {
            conn_process(c);
        }
        if (!(c->ep.flags & LP_EPF_CLOSING))
            lp_ep_release_rbuf(&c->ep);
        return;
    }
    if (c->ep.tls && nread == UV_EOF && lp_tls_established(c->ep.tls) &&
        !(c->ep.flags & LP_EPF_TLS_END)) {
        /* Decrypt what is still buffered first: it ends with the close_notify, if any. */
        lp_tls_in_eof(c->ep.tls);
        if (c->flags & LP_CF_H2)
            lp_h2_input(c);
        else if (c->flags & LP_CF_TUNNEL)
            conn_tunnel_pump(c);
        else
            conn_process(c);
        if ((c->ep.flags & LP_EPF_CLOSING) || (c->flags & LP_CF_EOF))
            return;
    }
    conn_on_eof(c, nread);
}

static void conn_update_reading(lp_conn_t *c)
{
    if ((c->ep.flags & LP_EPF_CLOSING) || (c->flags & LP_CF_LINGER))
        return;
    lp_req_t *req = (c->flags & LP_CF_H2) ? NULL : c->req;
    int want;
    if (c->flags & (LP_CF_EOF | LP_CF_CLOSE_AFTER))
        want = 0;
    else if (c->flags & LP_CF_H2)
        want = 1; /* streams' flow control bounds what a client may send ahead */
    else if (c->flags & LP_CF_TUNNEL) {
        want = !(req && req->try.peer && lp_relay_full(&req->try.peer->ep));
        /* Not reading the client, we would not see it go: the upstream's send timeout
         * (lp_peer_flush arms it) ends the tunnel if the upstream never reads again. */
        if (!want)
            lp_peer_flush(req->try.peer);
    } else
        want = !(req && (req->flags & LP_RF_READ_PAUSED)) &&
               !(c->ep.rbuf && c->ep.rlen == c->ep.rbuf->cap && c->ep.rpos < c->ep.rlen);
    lp_ep_reading(&c->ep, want);
}

/* ---- the response ---- */

/* Decides the framing of the response towards the client and queues its head as it stands
 * in req->resp (status, headers; written by http1.c). rh is the upstream's parsed head, NULL for a
 * local answer. */
/* A gRPC client gets the proxy's own error answers as gRPC statuses (errpage.h): HTTP 200,
 * no body, grpc-status and grpc-message in the head (a trailers-only response). Lua's other
 * fields stay. -1 when out of memory. */
static int grpc_head_add(void *req, const char *name, size_t nlen, const char *value, size_t vlen)
{
    return lp_ffi_header_set(req, 1, LP_FFI_HSET, name, nlen, value, vlen);
}

static int conn_grpc_local(lp_req_t *req)
{
    if (grpc_head_add(req, "Content-Type", 12, "application/grpc", 16) ||
        lp_errpage_grpc_fields(req->resp.status, grpc_head_add, req))
        return -1;
    free(req->resp.local_body);
    req->resp.local_body = NULL;
    req->resp.local_body_len = 0;
    req->resp.status = 200;
    return 0;
}

static int conn_send_head(lp_req_t *req, const lp_h1_t *rh)
{
    lp_conn_t *c = req->conn;
    int grpc_err = 0;
    if (!rh && (req->flags & LP_RF_GRPC) && req->resp.status >= 400 && !req->cache.body) {
        grpc_err = req->resp.status; /* the log and the metrics keep what it stands for */
        if (conn_grpc_local(req))
            return -1;
    }
    int status = req->resp.status;
    int upgrade = rh && (rh->flags & LP_H1F_UPGRADE) && (req->flags & LP_RF_UPGRADE_REQ);
    int no_body = (req->flags & LP_RF_HEAD) || status == 204 || status == 304 || upgrade;
    int close = (req->h1.flags & LP_H1F_CONN_CLOSE) || lp_ep_worker(&c->ep)->stopping ||
                (req->flags & LP_RF_RESP_CLOSE);
    int filtered = lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_BODY);
    int has_length = rh ? (rh->flags & LP_H1F_LENGTH) && !(rh->flags & LP_H1F_CHUNKED)
                        : !(req->cache.streaming == LP_CACHE_STREAM_FILL && !req->cache.fill_hint);
    if (filtered && !upgrade && status != 204 && status != 304)
        has_length = 0; /* a body filter may change the length (HEAD: unknown, so none) */
    if (req->resp.zip_coding && !no_body && status >= 200) {
        /* req:compress(): the compressed length is known only at the end. */
        has_length = 0;
        if (!req->resp.zip &&
            !(req->resp.zip = lp_zip_new(req->resp.zip_coding, req->resp.zip_level, &req->w->bufs,
                                         &req->w->zips)))
            return -1;
    }
    uint64_t length = rh ? rh->content_length : req->resp.local_body_len;
    if (rh && req->resp.win && status != 304)
        length = req->resp.win_len; /* the client's window of a body being stored whole (a 304
                                       keeps the length of the representation it describes) */
    req->resp.sent_status = grpc_err ? grpc_err : status;
    if (req->h2s) {
        /* HTTP/2 frames the body itself: a length is only advice (not for 204, nor for a
         * 304 whose upstream did not say it). */
        int said =
            has_length && status != 204 && (status != 304 || (rh && (rh->flags & LP_H1F_LENGTH)));
        if (down(req)->head(req, rh, no_body, said, length))
            return -1;
        req->flags |= LP_RF_RESP_STARTED | (said ? LP_RF_RESP_LENGTH : 0);
        lp_cache_req_head(req);
        return 0;
    }
    if (!no_body && !has_length) {
        /* Length unknown (or changed by a body filter): chunks for HTTP/1.1 clients, a close
         * for HTTP/1.0 ones. */
        if (req->minor >= 1)
            req->flags |= LP_RF_RESP_CHUNKED;
        else
            close = 1;
    }
    /* A refused upgrade leaves an HTTP/1.1 connection (RFC 9110 7.8): keep-alive holds. */
    if (close)
        req->flags |= LP_RF_RESP_CLOSE;

    lp_h1_resp_head_t head = {
        .status = status,
        .reason =
            rh && rh->reason.len && status == lp_h1_status(rh) ? rh->reason : (lp_str_t){NULL, 0},
        .headers = req->resp.headers,
        .nheaders = req->resp.nheaders,
        .local = rh == NULL,
        .stored = req->cache.body != NULL, /* answered from a cache entry (lp__cache_answer) */
        .upgrade = upgrade,
        .upgrade_proto = req->resp.upgrade,
        .chunked = (req->flags & LP_RF_RESP_CHUNKED) != 0,
        /* 304: the length only when the upstream said it (it describes another response). */
        .has_length =
            has_length && status != 204 && (status != 304 || (rh && (rh->flags & LP_H1F_LENGTH))),
        .length = length,
        .close = close,
        .http10 = req->minor == 0,
    };
    /* Most heads fit a small block; a larger one is taken only when needed. */
    lp_buf_t *hb = NULL;
    size_t n = 0;
    for (size_t cap = LP_BUF_SMALL; !n; cap *= 16) {
        if (hb)
            lp_buf_unref(hb);
        if (cap > 16 * LP_BUF_SIZE || !(hb = lp_buf_get(c->ep.env->bufs, cap)))
            return -1;
        n = lp_h1_response_head(hb->data, hb->cap, &head);
    }
    lp_wbatch_t *wb = lp_ep_outb(&c->ep, 1, 0);
    if (!wb) {
        lp_buf_unref(hb);
        return -1;
    }
    lp_wbatch_add(wb, hb->data, n, hb);
    lp_buf_unref(hb); /* the batch holds it now */
    req->flags |= LP_RF_RESP_STARTED;
    lp_cache_req_head(req); /* a key lock the plugin did not turn into a fill goes now */
    return 0;
}

int lp_conn_response_head(lp_req_t *req, lp_h1_t *rh)
{
    /* The head as the client will see it: end-to-end fields only (the framing fields are
     * regenerated), in the request's response list, where Lua may change it. */
    const lp_header_t *up = lp_h1_find(rh, "upgrade", 7);
    req->resp.upgrade = up ? up->value : (lp_str_t){NULL, 0};
    unsigned k = 0;
    for (unsigned i = 0; i < rh->nheaders; i++)
        if (!lp_h1_is_hop_by_hop(rh, rh->headers[i].name))
            rh->headers[k++] = rh->headers[i];
    req->resp.nheaders = k;
    req->resp.arena_used = rh->arena_len;
    req->resp.status = lp_h1_status(rh);
    req->t_upstream_head = uv_hrtime();
    lp_rc_t rc = conn_run_phase(req, LP_PHASE_RESPONSE);
    if (rc == LP_AGAIN || rc == LP_GONE)
        return rc;
    if (rc == LP_ERROR)
        return 500;
    if (req->flags & LP_RF_LOCAL) {
        /* The cache answered from an entry instead (a 304 that revalidated it, a 5xx it
         * serves stale over): the upstream exchange is dropped (conn_after_lua), so the
         * caller must not touch it again. */
        lp_conn_lua_resumed(req, LP_PHASE_RESPONSE, LP_OK);
        return LP_GONE;
    }
    return conn_send_head(req, rh) ? 502 : 0;
}

/* Bytes as they go on the wire (compressed when asked), framed for the client. */
static int conn_wire_out(void *arg, const char *at, size_t len, lp_buf_t *pin)
{
    lp_req_t *req = arg;
    lp_conn_t *c = req->conn;
    if (!len || (c->ep.flags & LP_EPF_CLOSING))
        return 0;
    req->resp.body_out += len;
    down(req)->body(req, at, len, pin);
    return 0;
}

/* Body bytes for the client, after the body filter if there is one: through the
 * compressor when req:compress() asked for one (so filters see the plain body, and the
 * client gets the filters' output compressed). LP_ERROR: the compressor failed. */
static int conn_write_body(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin)
{
    lp_conn_t *c = req->conn;
    if (!len || (c->ep.flags & LP_EPF_CLOSING))
        return LP_OK;
    if (req->resp.zip)
        return lp_zip_feed(req->resp.zip, at, len, 0, conn_wire_out, req) ? LP_ERROR : LP_OK;
    conn_wire_out(req, at, len, pin);
    return LP_OK;
}

/* A filter's output, copied into a block of its own, for the client. */
static int conn_filter_out(lp_req_t *req, lp_str_t out)
{
    if (!out.len)
        return LP_OK;
    if (req->resp.zip) /* compressed from where it is: the output blocks are the copy */
        return conn_write_body(req, out.base, out.len, NULL);
    lp_buf_t *b = lp_buf_get(&req->w->bufs, out.len);
    if (!b)
        return LP_ERROR;
    memcpy(b->data, out.base, out.len);
    int rc = conn_write_body(req, b->data, out.len, b);
    lp_buf_unref(b);
    return rc;
}

/* A response_body filter (or the compressor) failed once the head was queued: what is
 * queued still goes out (the client sees the status), then the connection closes, cutting
 * the body. */
static int conn_filter_failed(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    lp_log_warn("%s: %s %.*s: %s failed after the response started; %s%s", conn_ip(c),
                llhttp_method_name(req->method), (int)req->h1.path.len, req->h1.path.base,
                req->resp.zip ? "response compression or response_body filter"
                              : "response_body filter",
                req->h2s ? "resetting the stream" : "closing", lp_trace_tag(req));
    req->flags |= LP_RF_RESP_CLOSE;
    conn_count(req);
    if (req->h2s) {
        down(req)->abort(req); /* the stream is reset; the log line and phase as below */
        return LP_GONE;
    }
    conn_metrics(req);
    lp_accesslog_write(lp_ep_worker(&c->ep)->access, req);
    conn_end_cut_short(req); /* its log phase (detached), then its end and its upstream's */
    conn_close_after_write(c);
    return LP_GONE;
}

/* Runs the response_body filters on a chunk. LP_OK (the output is queued), LP_AGAIN (a
 * filter waits: its output and then `cont` follow from lp_conn_lua_resumed), LP_ERROR. */
static int conn_filter_body(lp_req_t *req, const char *at, size_t len, int eof, uint8_t cont)
{
    lp_str_t out;
    lp_rc_t rc = lp_lua_body_filter(req, at, len, eof, &out);
    if (rc == LP_AGAIN) {
        req->filter_cont = cont;
        return LP_AGAIN;
    }
    if (rc != LP_OK)
        return LP_ERROR;
    return conn_filter_out(req, out);
}

int lp_conn_response_body(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin)
{
    if (req->cache.fill)
        lp_cache_req_tee(req, at, len); /* the upstream's bytes, before any filter */
    if (req->resp.win) {
        /* Only the client's window of what is stored goes on (a cold Range request's slice,
         * nothing for a 304 answering its conditional). */
        lp_resp_t *rs = &req->resp;
        if (rs->win_skip >= len) {
            rs->win_skip -= len;
            return LP_OK;
        }
        at += rs->win_skip;
        len -= (size_t)rs->win_skip;
        rs->win_skip = 0;
        if (len > rs->win_len)
            len = (size_t)rs->win_len;
        rs->win_len -= len;
        if (!len)
            return LP_OK;
    }
    if (lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_BODY)) {
        if (!len)
            return LP_OK;
        /* A failed filter stops the upstream parser: the caller closes both sides. */
        return conn_filter_body(req, at, len, 0, LP_FC_UPSTREAM);
    }
    /* A failed compressor stops the upstream parser the same way. */
    return conn_write_body(req, at, len, pin);
}

/* The body is out (after the filters' last call): the chunked end, then the log phase. */
static int conn_response_end(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    if (req->resp.zip) {
        /* The compressed stream's end (its trailer), then the compressor's memory goes
         * back at once rather than at the request's end (after the log phase). */
        if (lp_zip_feed(req->resp.zip, "", 0, 1, conn_wire_out, req))
            return conn_filter_failed(req);
        lp_zip_free(req->resp.zip);
        req->resp.zip = NULL;
    }
    down(req)->end(req);
    req->flags |= LP_RF_RESP_DONE;
    /* Counted before the last bytes go: a client that reads them and asks /status at once
     * sees its request (the counter is read on another thread). */
    conn_count(req);
    lp_conn_flush(c);
    if (req->state != LP_RS_DONE) {
        /* The upstream answered before the request body ended (an early 413, say):
         * the rest of the body is unread, so the connection cannot be reused. */
        req->flags |= LP_RF_RESP_CLOSE;
    }
    return req_finish(req);
}

int lp_conn_response_done(lp_req_t *req)
{
    if (req->cache.fill)
        lp_cache_req_done(req); /* complete: linked (a local answer's fill is dropped) */
    if (lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_BODY) && !(req->flags & LP_RF_HEAD)) {
        int rc = conn_filter_body(req, "", 0, 1, LP_FC_EOF);
        if (rc == LP_AGAIN)
            return LP_OK;
        if (rc != LP_OK)
            return conn_filter_failed(req);
    }
    return conn_response_end(req);
}

/* A req:respond() answer, or the proxy's own: the response phase may still change it,
 * then it is sent. */
static int conn_respond_lua(lp_req_t *req)
{
    if (body_known_empty(req))
        req->state = LP_RS_DONE;
    req->flags &= ~LP_RF_WAIT_UPSTREAM;
    lp_rc_t rc = conn_run_phase(req, LP_PHASE_RESPONSE);
    if (rc == LP_AGAIN)
        return LP_OK;
    return conn_after_lua(req, LP_PHASE_RESPONSE, rc == LP_DECLINED ? LP_OK : rc);
}

static int conn_send_local(lp_req_t *req)
{
    if (conn_send_head(req, NULL)) {
        down(req)->abort(req);
        return LP_GONE;
    }
    if (req->cache.body) {
        if ((req->flags & LP_RF_HEAD) || !req->cache.left) {
            lp_cache_req_body_done(req);
            return conn_local_done(req);
        }
        return conn_cache_pump(req);
    }
    if (!(req->flags & LP_RF_HEAD) && req->resp.local_body_len) {
        lp_buf_t *b = lp_buf_get(&req->w->bufs, req->resp.local_body_len);
        if (!b) {
            down(req)->abort(req);
            return LP_GONE;
        }
        memcpy(b->data, req->resp.local_body, req->resp.local_body_len);
        int rc = LP_OK;
        if (lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_BODY))
            rc = conn_filter_body(req, b->data, req->resp.local_body_len, 0, LP_FC_LOCAL);
        else
            rc = conn_write_body(req, b->data, req->resp.local_body_len, b);
        lp_buf_unref(b);
        if (rc == LP_AGAIN)
            return LP_OK;
        if (rc != LP_OK)
            return conn_filter_failed(req);
    }
    return conn_local_done(req);
}

/* A piece of a hit's body for the client: through the response_body filters when the
 * route has some, as an upstream's chunk is (the filters' contract is per chunk: they never
 * needed the body whole). LP_OK, LP_AGAIN (a filter waits: its end calls the pump again,
 * LP_FC_CACHE), LP_ERROR. */
static int conn_cache_piece(lp_req_t *req, const char *at, size_t n, lp_buf_t *pin)
{
    if (lp_lua_wants(req->g->lua, req->route_index, LP_PHASE_BODY))
        return conn_filter_body(req, at, n, 0, LP_FC_CACHE);
    return conn_write_body(req, at, n, pin);
}

/* A hit's body, from its entry's chunks without copying: iovecs into the chunks, each
 * pinning the entry (lp_cache_req_pin), queued until the client's side holds the high
 * watermark; conn_on_written calls again once it drained to the low one. At most
 * CACHE_TURN_BYTES of the entry per call: a response_body filter that sends little or
 * nothing (one that buffers or drops), or a compressor on a body that shrinks to nothing,
 * never fills the client's side, and would otherwise run over the whole entry (up to
 * max_object_size / 64 KiB Lua calls) while the worker serves nobody else; the rest goes on
 * the next loop turn (req->cache.turn), as an upstream's body goes a read at a time. LP_OK
 * while it waits, else what ending the answer returns. */
#define CACHE_TURN_BYTES (4 * LP_CACHE_CHUNK)

static int conn_cache_stream(lp_req_t *req);
static int conn_fill_stream(lp_req_t *req);

/* The pump's next turn (turn.h): lp_conn_cache_resume checks that the request still
 * writes this hit's body (the queued turn is cancelled when the body ends or the request
 * does, so req is alive here). */
static void conn_cache_turn(lp_turn_t *t)
{
    lp_conn_cache_resume(LP_CONTAINER_OF(t, lp_req_t, cache.turn));
}

static int conn_cache_pump(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    lp_req_cache_t *rc = &req->cache;
    if (req->filter_cont != LP_FC_NONE)
        return LP_OK; /* a filter waits on the last piece: its end goes on (LP_FC_CACHE) */
    if (rc->streaming)
        return rc->streaming == LP_CACHE_STREAM_FILL ? conn_fill_stream(req)
                                                     : conn_cache_stream(req);
    lp_buf_t *pin = lp_cache_req_pin(req);
    if (!pin) {
        down(req)->abort(req);
        return LP_GONE;
    }
    size_t budget = CACHE_TURN_BYTES;
    for (;;) {
        uint64_t before = rc->left;
        /* HTTP/2: up to the stream's high watermark (its queue holds copies, which its
         * window drains); h2.c's h2_leave calls again (lp_conn_cache_resume) once it is
         * below the low one, so a large hit never sits whole in the stream's queue. */
        while (rc->left && rc->chunk && budget &&
               !(req->h2s ? down(req)->full(req) : lp_ep_queued(&c->ep) >= LP_HIGH_WATERMARK) &&
               !(c->ep.flags & LP_EPF_CLOSING)) {
            size_t n = rc->chunk->len - rc->chunk_off;
            if (n > rc->left)
                n = (size_t)rc->left;
            const char *at = rc->chunk->data + rc->chunk_off;
            budget -= n < budget ? n : budget;
            rc->left -= n;
            rc->chunk_off += n;
            if (rc->chunk_off == rc->chunk->len) {
                rc->chunk = rc->chunk->next;
                rc->chunk_off = 0;
            }
            int prc = conn_cache_piece(req, at, n, pin);
            if (prc == LP_AGAIN) {
                lp_conn_flush(c);
                return LP_OK;
            }
            if (prc != LP_OK)
                return conn_filter_failed(req); /* a filter or the compressor failed */
        }
        if (!rc->chunk)
            rc->left = 0; /* cannot happen (the length came from the chunks); never spin */
        lp_conn_flush(c);
        if (c->ep.flags & LP_EPF_CLOSING)
            return LP_OK; /* the connection's end ends the request */
        if (!rc->left)
            break;
        if (!budget) {
            /* This turn's share is spent: the rest after the other connections' I/O. Also
             * when the client's side is full: the turn then finds no room and leaves it to
             * the drain (conn_on_written, h2_leave), which alone may not come (an HTTP/2
             * stream stopped here below its high watermark is never `was_full`). */
            lp_turn_queue(&req->w->turns, &rc->turn, conn_cache_turn);
            return LP_OK;
        }
        if (c->ep.out_pending > LP_LOW_WATERMARK || rc->left == before)
            return LP_OK; /* conn_on_written goes on */
    }
    lp_cache_req_body_done(req);
    return conn_local_done(req);
}

/* A disk-only hit's body, read from its file a chunk at a time (cache_disk_hit.c): a read
 * starts only while the client's side holds less than the high watermark (HTTP/1: the
 * socket's queue; HTTP/2: the stream's, which its window drains), and its end
 * (lp_conn_cache_resume) or the drain goes on (conn_on_written; h2.c's h2_leave for a
 * stream that was full). A file that fails mid-way cuts the answer short (the client sees a
 * truncated body, never a wrong one whole). */
static int conn_cache_stream(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    lp_req_cache_t *rc = &req->cache;
    while (rc->left &&
           !(req->h2s ? down(req)->full(req) : lp_ep_queued(&c->ep) >= LP_HIGH_WATERMARK) &&
           !(c->ep.flags & LP_EPF_CLOSING)) {
        lp_buf_t *b;
        size_t n;
        int got = lp_cache_stream_next(rc->stream, &b, &n);
        if (!got)
            break; /* a read runs */
        if (got < 0) {
            lp_cache_req_body_done(req);
            down(req)->abort(req);
            return LP_GONE;
        }
        if (n > rc->left)
            n = (size_t)rc->left;
        rc->left -= n;
        int wrc = conn_cache_piece(req, b->data, n, b); /* a filter copies what it keeps */
        lp_buf_unref(b);
        if (wrc == LP_AGAIN) {
            lp_conn_flush(c);
            return LP_OK;
        }
        if (wrc != LP_OK)
            return conn_filter_failed(req);
    }
    lp_conn_flush(c);
    if ((c->ep.flags & LP_EPF_CLOSING) || rc->left)
        return LP_OK;
    lp_cache_req_body_done(req);
    return conn_local_done(req);
}

/* A coalesced waiter's answer from an entry as it fills (cache_ffi.c): what is there goes
 * as the memory hit's does (zero-copy, pinned, at most CACHE_TURN_BYTES a turn, up to the
 * high watermark); at its end the pump waits for the filler's next append, which resumes it
 * (lp_conn_cache_resume, through the worker's inbox). The fill's commit ends the body (a
 * length unknown: the chunked end); a fill that fails cuts the answer short (the client sees
 * a truncated body, never a wrong one whole). */
static int conn_fill_stream(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    lp_req_cache_t *rc = &req->cache;
    lp_buf_t *pin = lp_cache_req_pin(req);
    int unsized = rc->fill_hint == 0;
    size_t budget = CACHE_TURN_BYTES;
    for (;;) {
        int waiting = 0, moved = 0;
        while (pin && rc->left &&
               !(req->h2s ? down(req)->full(req) : lp_ep_queued(&c->ep) >= LP_HIGH_WATERMARK) &&
               !(c->ep.flags & LP_EPF_CLOSING)) {
            if (!budget) {
                /* This turn's share is spent: the rest after the other connections' I/O. */
                lp_conn_flush(c);
                lp_turn_queue(&req->w->turns, &rc->turn, conn_cache_turn);
                return LP_OK;
            }
            const char *at;
            size_t n;
            int got = lp_cache_req_fill_next(req, &at, &n);
            if (!got) {
                waiting = 1; /* the filler's next bytes resume it */
                break;
            }
            if (got == 2 && unsized) {
                rc->left = 0;
                break;
            }
            if (got != 1 || (!unsized && n > rc->left)) {
                pin = NULL; /* failed, or not the length said: cut short */
                break;
            }
            if (!unsized)
                rc->left -= n;
            moved = 1;
            budget -= n < budget ? n : budget;
            int prc = conn_cache_piece(req, at, n, pin);
            if (prc == LP_AGAIN) {
                lp_conn_flush(c);
                return LP_OK;
            }
            if (prc != LP_OK)
                return conn_filter_failed(req);
        }
        if (!pin) {
            lp_cache_req_body_done(req);
            down(req)->abort(req);
            return LP_GONE;
        }
        lp_conn_flush(c);
        if (c->ep.flags & LP_EPF_CLOSING)
            return LP_OK; /* the connection's end ends the request */
        if (!rc->left)
            break;
        /* Waiting for the filler, or for the client's side to drain (conn_on_written,
         * h2_leave); a flush that wrote everything at once brings no drain: go on. */
        if (waiting || !moved || req->h2s || c->ep.out_pending > LP_LOW_WATERMARK)
            return LP_OK;
    }
    lp_cache_req_body_done(req);
    return conn_local_done(req);
}

void lp_conn_cache_resume(lp_req_t *req)
{
    /* A request cut while a read ran may still be alive, detached for its log phase: its
     * client is gone (req->conn NULL), its stream is freed when it ends. */
    if (!req->cache.body || !req->cache.left ||
        (req->flags & (LP_RF_RESP_STARTED | LP_RF_RESP_DONE)) != LP_RF_RESP_STARTED || !req->conn)
        return;
    lp_req_hold(req);
    conn_cache_pump(req);
    lp_req_drop(req);
}

/* A local answer's body is out: the rest of the request is unread when it was not read. */
static int conn_local_done(lp_req_t *req)
{
    if (!(req->state == LP_RS_DONE))
        req->flags |= LP_RF_RESP_CLOSE;
    return lp_conn_response_done(req);
}

/* A response_body filter that waited ended: its output goes out, then what it held up
 * (the upstream's next bytes, the end of the response, a local answer's end). */
static int conn_filter_resumed(lp_req_t *req)
{
    uint8_t cont = req->filter_cont;
    req->filter_cont = LP_FC_NONE;
    lp_str_t out;
    if (lp_lua_body_output(req, &out) != LP_OK || conn_filter_out(req, out) != LP_OK)
        return conn_filter_failed(req);
    switch (cont) {
    case LP_FC_UPSTREAM:
        if (req->try.peer) {
            lp_req_hold(req);
            lp_conn_flush(req->conn);
            lp_peer_continue(req->try.peer);
            return lp_req_let_go(req);
        }
        return LP_OK;
    case LP_FC_EOF:
        return conn_response_end(req);
    case LP_FC_LOCAL:
        return conn_local_done(req);
    case LP_FC_CACHE:
        return conn_cache_pump(req);
    }
    return LP_OK;
}

/* Where the request goes after a Lua phase ended with rc. LP_GONE when the request
 * ended. */
static int conn_after_lua(lp_req_t *req, int phase, lp_rc_t rc)
{
    if (rc == LP_GONE)
        return LP_GONE;
    if (rc == LP_ERROR) {
        if (phase == LP_PHASE_LOG)
            return req_finish(req);
        if (phase == LP_PHASE_BODY)
            return conn_filter_failed(req);
        if (req->flags & LP_RF_RESP_STARTED) {
            down(req)->abort(req);
            return LP_GONE;
        }
        if (body_known_empty(req))
            req->state = LP_RS_DONE;
        if (req->try.peer) {
            lp_peer_abort(req->try.peer);
            req->try.peer = NULL;
        }
        /* The connection stays open when nothing of the request is left unread. */
        return conn_respond_local(req, 500, 1, NULL);
    }
    if (rc == LP_DONE)
        return conn_respond_lua(req);
    switch (phase) {
    case LP_PHASE_REQUEST:
        if (req->body_limit && (req->h1.flags & LP_H1F_LENGTH) &&
            req->h1.content_length > req->body_limit)
            return conn_respond_local(req, 413, 0, NULL);
        rc = conn_run_phase(req, LP_PHASE_UPSTREAM);
        if (rc == LP_AGAIN)
            return LP_OK;
        if (rc != LP_DECLINED && rc != LP_OK)
            return conn_after_lua(req, LP_PHASE_UPSTREAM, rc);
        return conn_start_upstream(req);
    case LP_PHASE_UPSTREAM:
        return conn_start_upstream(req);
    case LP_PHASE_RESPONSE:
        if ((req->flags & LP_RF_LOCAL) && req->try.peer) {
            /* The cache plugin answered from an entry instead (a 304 that revalidated it, a
             * 5xx it serves stale over): the upstream's answer is dropped. */
            lp_peer_abort(req->try.peer);
            req->try.peer = NULL;
        }
        if (req->flags & LP_RF_LOCAL)
            return conn_send_local(req);
        if (req->try.peer) {
            if (conn_send_head(req, &req->try.peer->h1))
                return lp_conn_upstream_failed(req, 502, "response head too large");
            lp_req_hold(req);
            lp_peer_continue(req->try.peer);
            return lp_req_let_go(req);
        }
        return LP_OK;
    case LP_PHASE_BODY:
        return conn_filter_resumed(req);
    case LP_PHASE_LOG:
        return req_finish(req);
    }
    return LP_OK;
}

int lp_conn_lua_resumed(lp_req_t *req, int phase, lp_rc_t rc)
{
    lp_req_hold(req);
    lp_conn_t *c = req->conn;
    if (conn_after_lua(req, phase, rc) == LP_OK &&
        (phase == LP_PHASE_REQUEST || phase == LP_PHASE_UPSTREAM))
        conn_update_reading(c);
    return lp_req_let_go(req);
}

/* The request's metrics (metrics.h), once, next to its access log line: its route's count
 * by status class, body bytes and duration; its upstream's response time. Plain loads
 * and stores into this worker's cells. */
static void conn_metrics(lp_req_t *req)
{
    lp_wgen_t *g = req->g;
    if (!g || !g->m_route || (req->flags & LP_RF_METERED))
        return;
    req->flags |= LP_RF_METERED;
    const lp_config_t *cfg = g->config;
    /* A config route's cells, an admin route's (by its name, in the table it was routed
     * with), or those of "no route matched". */
    uint64_t *c = req->route_index >= 0
                      ? g->m_route[req->route_index]
                      : lp_rtable_cells(req->rtable, req->route, (unsigned)(req->w->id - 1));
    if (!c)
        c = g->m_route[cfg->nroutes];
    uint64_t now = uv_hrtime();
    lp_metrics_request(c, &lp_metrics, req->resp.sent_status, req->body_in, req->resp.body_out,
                       now - req->t_start);
    lp_upstream_rt_t *u = req->upstream;
    if (u && req->t_upstream && u >= g->upstreams && u < g->upstreams + cfg->nupstreams)
        lp_metrics_upstream(g->m_up[u - g->upstreams], &lp_metrics, now - req->t_upstream);
}

/* Counts the request as served, once (GET /status's `requests`). */
static void conn_count(lp_req_t *req)
{
    if (req->flags & LP_RF_COUNTED)
        return;
    req->flags |= LP_RF_COUNTED;
    __atomic_add_fetch(&req->w->requests, 1, __ATOMIC_RELAXED);
}

/* The response is out (or failed): the log phase, the access log, then the connection's
 * next request. A log phase that waits (I/O, a sleep) goes on detached from the
 * connection, which moves on at once (lp_req_detach). LP_GONE: the request ended or left
 * the connection. */
static int req_finish(lp_req_t *req)
{
    if (req->flags & LP_RF_DETACHED) {
        /* Its detached log phase is over. */
        lp_req_end(req);
        return LP_GONE;
    }
    lp_conn_t *c = req->conn;
    lp_worker_t *w = lp_ep_worker(&c->ep);
    int log_waits = 0;
    if ((req->flags & (LP_RF_LOG_DONE | LP_RF_PARSED)) == LP_RF_PARSED) {
        req->flags |= LP_RF_LOG_DONE;
        log_waits = conn_run_phase(req, LP_PHASE_LOG) == LP_AGAIN;
    }
    if (req->h2s) {
        conn_count(req);
        conn_metrics(req);
        lp_accesslog_write(w->access, req);
        if (log_waits)
            lp_req_detach(req);
        else
            lp_req_end(req);
        lp_h2_down_ops.finished(req, c, 0);
        return LP_GONE;
    }
    int keep = !(req->flags & LP_RF_RESP_CLOSE) && req->state == LP_RS_DONE && !w->stopping &&
               !((c->flags & LP_CF_EOF) && !(c->ep.rbuf && c->ep.rpos < c->ep.rlen));
    conn_count(req);
    c->nrequests++;
    /* The client asked to close (so it sends nothing more: RFC 9112 9.6) or already did,
     * and its request was read whole with nothing behind it: once the answer is out, no
     * unread input can turn the close into a reset, so no lingering close. A close the
     * proxy decides (an error, a shutdown) still lingers: the client may be sending. */
    if (!keep && req->state == LP_RS_DONE && !(c->ep.rbuf && c->ep.rpos < c->ep.rlen) &&
        ((req->h1.flags & LP_H1F_CONN_CLOSE) || (c->flags & LP_CF_EOF)))
        c->flags |= LP_CF_CLEAN_END;
    conn_metrics(req);
    lp_accesslog_write(w->access, req);
    if (log_waits)
        lp_req_detach(req); /* it ends when its log phase does (above) */
    else
        lp_req_end(req);
    h1_ops.finished(req, c, keep);
    return LP_GONE;
}

/* ---- HTTP/1.1 as the request's downstream side (conn.h lp_down_ops_t) ---- */

static int h1_head(lp_req_t *req, const lp_h1_t *rh, int no_body, int has_length, uint64_t length)
{
    return -1; /* conn_send_head serializes HTTP/1.1 heads itself (never called) */
}

static void h1_body(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin)
{
    lp_relay_body(&req->conn->ep, at, len, pin, (req->flags & LP_RF_RESP_CHUNKED) != 0);
}

static void h1_end(lp_req_t *req)
{
    if (!(req->flags & LP_RF_RESP_CHUNKED))
        return; /* trailers need chunks: without them they are dropped */
    lp_wbatch_t *wb = lp_ep_outb(&req->conn->ep, 1, 0);
    if (!wb)
        return;
    lp_buf_t *b = req->resp.trailers ? lp_buf_get(&req->w->bufs, req->resp.trailers_len + 5) : NULL;
    if (!b) {
        lp_wbatch_add(wb, "0\r\n\r\n", 5, NULL);
        return;
    }
    memcpy(b->data, "0\r\n", 3);
    memcpy(b->data + 3, req->resp.trailers, req->resp.trailers_len);
    memcpy(b->data + 3 + req->resp.trailers_len, "\r\n", 2);
    lp_wbatch_add(wb, b->data, req->resp.trailers_len + 5, b);
    lp_buf_unref(b);
}

static int h1_full(const lp_req_t *req)
{
    return lp_relay_full(&req->conn->ep);
}

static void h1_flush(lp_req_t *req)
{
    lp_conn_flush(req->conn);
}

static void h1_abort(lp_req_t *req)
{
    lp_conn_close(req->conn);
}

static void h1_pump(lp_req_t *req)
{
    conn_process(req->conn);
}

/* The connection's next request, or its end. */
static void h1_finished(lp_req_t *req, lp_conn_t *c, int keep)
{
    if (!keep) {
        conn_close_after_write(c);
        return;
    }
    lp_conn_flush(c);
    conn_timer(c, TM_IDLE, T(c)->keepalive);
    conn_process(c);
}

static const lp_down_ops_t h1_ops = {
    .head = h1_head,
    .body = h1_body,
    .end = h1_end,
    .full = h1_full,
    .flush = h1_flush,
    .abort = h1_abort,
    .pump = h1_pump,
    .finished = h1_finished,
};

int lp_conn_req_full(const lp_req_t *req)
{
    return down(req)->full(req);
}

/* ---- tunnel ---- */

void lp_conn_tunnel_start(lp_req_t *req)
{
    lp_conn_t *c = req->conn;
    c->flags |= LP_CF_TUNNEL;
    /* Idle in both directions for timeouts.tunnel ends it (WebSockets' pings keep theirs
     * open), as do HAProxy's `timeout tunnel` and nginx's proxy_read_timeout: a client that
     * left without its FIN or reset ever arriving must not hold the connections forever.
     * A send stall the 101's flush armed keeps its timer (conn_tunnel_touch). */
    conn_tunnel_touch(c);
    /* Bytes the client sent after its request belong to the new protocol. */
    if (c->ep.rbuf && c->ep.rpos < c->ep.rlen && req->try.peer)
        lp_relay_move(&c->ep, &req->try.peer->ep);
    if (c->ep.tls)
        conn_tunnel_pump(c);
    if ((c->flags & LP_CF_EOF) && !c->ep.tls && req->try.peer) {
        /* The client's FIN came before the switch (with its request): the tunnel ends as
         * if it had come through it (conn_on_eof), else nothing would ever end it. */
        lp_peer_tunnel_eof(req->try.peer);
        return;
    }
    conn_update_reading(c);
}

void lp_conn_tunnel_from(lp_conn_t *c, lp_endpoint_t *from)
{
    lp_relay_move(from, &c->ep);
    conn_tunnel_touch(c);
    lp_conn_flush(c); /* a client that stops reading meets the send timeout */
}

void lp_conn_tunnel_resume(lp_conn_t *c)
{
    if (c->ep.tls)
        conn_tunnel_pump(c);
    conn_update_reading(c);
}

void lp_conn_tunnel_end(lp_conn_t *c)
{
    conn_close_after_write(c);
}

/* ---- accept ---- */

static const lp_endpoint_ops_t conn_ops = {
    .input = conn_on_input,
    .written = conn_on_written,
    .timeout = conn_on_timeout,
    .closed = conn_on_closed,
};

static void on_refused_close(uv_handle_t *h)
{
    free(h);
}

/* Over limits.max_connections: the connection is taken off the backlog and closed at once
 * (nginx's worker_connections; a client connection holds memory and file descriptors that
 * a peer must not be able to multiply without bound). */
static void conn_refuse(uv_stream_t *server, lp_worker_t *w)
{
    static _Thread_local uint64_t last_warned;
    uint64_t now = uv_now(&w->loop);
    if (!last_warned || now - last_warned >= 1000) {
        last_warned = now;
        lp_log_warn("limits.max_connections (%u) reached in this worker: closing new connections",
                    w->config->limits.max_connections);
    }
    uv_tcp_t *t = malloc(sizeof(*t));
    if (!t || uv_tcp_init(&w->loop, t)) {
        free(t);
        return;
    }
    (void)uv_accept(server, (uv_stream_t *)t);
    uv_close((uv_handle_t *)t, on_refused_close);
}

void lp_conn_on_connection(uv_stream_t *server, int status)
{
    lp_listener_t *l = server->data;
    lp_worker_t *w = l->w;
    if (status < 0) {
        lp_log_warn("accept: %s", uv_strerror(status));
        return;
    }
    unsigned max = w->config->limits.max_connections;
    if (max && __atomic_load_n(&w->nconns, __ATOMIC_RELAXED) >= max) {
        conn_refuse(server, w);
        return;
    }
    lp_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    lp_ep_init(&c->ep, &w->ep_env, &conn_ops);
    lp_list_insert_tail(&w->conns, &c->link);
    __atomic_add_fetch(&w->nconns, 1, __ATOMIC_RELAXED);
    if (uv_accept(server, (uv_stream_t *)&c->ep.tcp)) {
        lp_ep_close(&c->ep);
        return;
    }
    LP_M_ADD(&w->m_cells[LP_WM_ACCEPTED], 1);
    c->ep.flags |= LP_EPF_WRITABLE;
    uv_tcp_nodelay(&c->ep.tcp, 1);
    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->ep.tcp, (struct sockaddr *)&ss, &len) == 0) {
        if (ss.ss_family == AF_INET) {
            memcpy(c->client_addr, &((struct sockaddr_in *)&ss)->sin_addr, 4);
        } else if (ss.ss_family == AF_INET6) {
            memcpy(c->client_addr, &((struct sockaddr_in6 *)&ss)->sin6_addr, 16);
            c->flags |= LP_CF_V6;
        }
    }
    c->listen_tag = (uint16_t)l->id;
    if (l->http2 && !l->tls)
        c->flags |= LP_CF_H2C;
    /* Accepted while the worker drains (the listener closes at the drain's start, but a
     * connection the same loop turn accepted comes here): served like any other fresh
     * connection (lp_conn_drain), not closed unread. */
    if (l->proxy_protocol) {
        /* The header comes first, in the clear, whatever the listener speaks. */
        c->flags |= LP_CF_PROXY_WAIT;
        c->ep.flags |= LP_EPF_RAW_IN;
    }
    if (l->tls) {
        c->ep.tls = lp_tls_accept(l->tls, &w->bufs);
        if (!c->ep.tls) {
            lp_log_warn("%s: cannot start TLS (out of memory)", conn_ip(c));
            lp_conn_close(c);
            return;
        }
        conn_timer(c, TM_HANDSHAKE, lp_tls_server_handshake_timeout(l->tls));
    } else {
        conn_timer(c, TM_IDLE, T(c)->client_header);
    }
    conn_update_reading(c);
}

void lp_conn_drain(lp_conn_t *c)
{
    if (c->ep.flags & LP_EPF_CLOSING)
        return;
    if (c->flags & LP_CF_H2) {
        lp_h2_drain(c);
        return;
    }
    /* An idle keep-alive connection closes (a client that sends on it meanwhile may
     * retry: RFC 9112 9.3.1). A connection that has not had its first request yet is
     * not idle: its client connected to be served, maybe just before the listener closed
     * (a binary upgrade hands the listener on, so the queue it came from lives on), and
     * its request may already be on the way. It gets that one request (the header timeout
     * bounds the wait), answered with Connection: close. */
    int fresh = (c->flags & LP_CF_HS_WAIT) || c->nrequests == 0;
    if (!c->req && !c->ep.out_pending && !(c->flags & LP_CF_LINGER) && !fresh)
        lp_conn_close(c);
    /* Busy connections finish their request; req_finish sees w->stopping and closes. */
}
