/* The upstream request head, for every protocol (upstream_head.h). */
#include <stdlib.h>
#include <string.h>
#include "http1.h"
#include "req_body.h"
#include "request.h"
#include "trace.h"
#include "upstream_head.h"

/* Fields the proxy sets itself: the client's never go through. (Hop-by-hop fields,
 * Content-Length and Transfer-Encoding among them, are lp_h1_is_hop_by_hop's.) */
static int is_replaced(lp_str_t n)
{
    return LP_STR_IEQ(n, "x-forwarded-for") || LP_STR_IEQ(n, "x-forwarded-proto") ||
           LP_STR_IEQ(n, "x-forwarded-host") || LP_STR_IEQ(n, "expect") || LP_STR_IEQ(n, "host");
}

static void add(lp_uphead_t *u, const char *name, size_t nlen, const char *value, size_t vlen)
{
    u->fields[u->n++] = (lp_header_t){{name, nlen}, {value, vlen}};
}

#define ADD_LIT(u, name, value) add(u, name, sizeof(name) - 1, value, sizeof(value) - 1)

int lp_uphead_build(lp_uphead_t *u, lp_req_t *req, const lp_pool_t *t, int proto)
{
    const lp_h1_t *h = &req->h1;
    const lp_route_conf_t *r = req->route;
    u->method = llhttp_method_name(req->method);
    u->authority = h->host.base ? h->host : (lp_str_t){t->addr.text, strlen(t->addr.text)};
    u->path = h->path;
    /* A detached request has no connection: its scheme was kept as LP_RF_TLS. */
    int tls = req->conn ? req->conn->ep.tls != NULL : (req->flags & LP_RF_TLS) != 0;
    int slash = 0;
    if (r && r->strip_prefix && r->prefix_len > 1 && !(req->flags & LP_RF_PATH_SET) &&
        u->path.len >= r->prefix_len) {
        u->path.base += r->prefix_len;
        u->path.len -= r->prefix_len;
        slash = !u->path.len || u->path.base[0] != '/';
    }
    /* Made values go in `text`, sized first: the stripped path's "/", every
     * X-Forwarded-For joined with the client appended, traceparent, Content-Length. */
    const char *ip = lp_req_client_ip(req);
    size_t iplen = strlen(ip), xff = 0, nxff = 0;
    for (unsigned i = 0; i < h->nheaders; i++)
        if (LP_STR_IEQ(h->headers[i].name, "x-forwarded-for")) {
            xff += h->headers[i].value.len + 2;
            nxff++;
        }
    size_t need =
        (slash ? u->path.len + 1 : 0) + (nxff ? xff + iplen : 0) + LP_TRACEPARENT_LEN + 24;
    u->text = need <= sizeof(u->tbuf) ? u->tbuf : malloc(need);
    unsigned nmax = h->nheaders + 10;
    u->fields = nmax <= LP_UPHEAD_FIELDS ? u->fixed : malloc(nmax * sizeof(lp_header_t));
    if (!u->text || !u->fields) {
        lp_uphead_free(u);
        return LP_ENOMEM;
    }
    u->n = 0;
    char *o = u->text;
    if (slash) {
        o[0] = '/';
        memcpy(o + 1, u->path.base, u->path.len);
        u->path = (lp_str_t){o, u->path.len + 1};
        o += u->path.len;
    }
    if (!nxff) {
        add(u, "X-Forwarded-For", 15, ip, iplen);
    } else {
        char *v = o;
        for (unsigned i = 0; i < h->nheaders; i++) {
            const lp_header_t *hd = &h->headers[i];
            if (LP_STR_IEQ(hd->name, "x-forwarded-for")) {
                memcpy(o, hd->value.base, hd->value.len);
                memcpy(o + hd->value.len, ", ", 2);
                o += hd->value.len + 2;
            }
        }
        memcpy(o, ip, iplen);
        o += iplen;
        add(u, "X-Forwarded-For", 15, v, (size_t)(o - v));
    }
    if (tls)
        ADD_LIT(u, "X-Forwarded-Proto", "https");
    else
        ADD_LIT(u, "X-Forwarded-Proto", "http");
    if (h->host.base)
        add(u, "X-Forwarded-Host", 16, h->host.base, h->host.len);
    int te = proto == LP_UPHEAD_H2 && (req->flags & LP_RF_GRPC);
    for (unsigned i = 0; i < h->nheaders; i++) {
        const lp_header_t *hd = &h->headers[i];
        /* A client's "te: trailers" goes on over HTTP/2, where it is the only TE allowed. */
        if (proto == LP_UPHEAD_H2 && LP_STR_IEQ(hd->name, "te") &&
            lp_str_ieq(hd->value, "trailers", 8))
            te = 1;
        /* (Every name here is a token: llhttp, h2.c's pseudo-headers turned into the request
         * line, Lua's set_header all see to it; no ':' name can reach an HTTP/2 list.) */
        if (lp_h1_is_hop_by_hop(h, hd->name) || is_replaced(hd->name) ||
            lp_trace_is_header(req, hd->name))
            continue;
        u->fields[u->n++] = *hd;
    }
    if (te)
        ADD_LIT(u, "te", "trailers");
    if (req->trace.on) {
        lp_str_t ts = lp_trace_upstream_fields(req, o);
        add(u, "traceparent", 11, o, LP_TRACEPARENT_LEN);
        o += LP_TRACEPARENT_LEN;
        if (ts.len)
            add(u, "tracestate", 10, ts.base, ts.len);
    }
    if (lp_req_body_replaced(req)) {
        /* req:set_body(): its length, whatever framing the client's body had. */
        add(u, "Content-Length", 14, o, lp_u64_to_str(req->new_body_len, 10, o));
    } else if (h->flags & LP_H1F_CHUNKED) {
        if (proto == LP_UPHEAD_H1) /* HTTP/2 frames the body itself */
            ADD_LIT(u, "Transfer-Encoding", "chunked");
    } else if (h->flags & LP_H1F_LENGTH) {
        add(u, "Content-Length", 14, o, lp_u64_to_str(h->content_length, 10, o));
    }
    if (proto == LP_UPHEAD_H1 && (req->flags & LP_RF_UPGRADE_REQ)) {
        const lp_header_t *up = lp_h1_find(h, "upgrade", 7);
        ADD_LIT(u, "Connection", "upgrade");
        if (up)
            add(u, "Upgrade", 7, up->value.base, up->value.len);
    }
    return 0;
}

void lp_uphead_free(lp_uphead_t *u)
{
    if (u->text != u->tbuf)
        free(u->text);
    if (u->fields != u->fixed)
        free(u->fields);
    u->text = u->tbuf;
    u->fields = u->fixed;
}
