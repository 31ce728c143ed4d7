/* OTLP/HTTP JSON for a request's spans (https://opentelemetry.io/docs/specs/otlp/, JSON
 * encoding: ids as lower-case hex strings, nanosecond times and 64-bit integers as decimal
 * strings, enums as numbers), with the HTTP semantic conventions' attribute names. Pure
 * formatting into a buffer the caller sized with lp_trace_otlp_bound(); trace_export.c
 * queues and sends. */
#include <stdio.h>
#include <stdlib.h>
#include "accesslog.h"
#include "conn.h"
#include "http1.h"
#include "request.h"
#include "trace.h"

/* The JSON before the spans, for service name svc (owned; NULL when out of memory). */
char *lp_trace_otlp_prefix(const char *svc, size_t *len)
{
    size_t sl = strlen(svc);
    char *esc = malloc(6 * sl + 1);
    if (!esc)
        return NULL;
    size_t el = lp__accesslog_json_escape(esc, svc, sl);
    size_t cap = el + 256;
    char *p = malloc(cap);
    int n = p ? snprintf(p, cap,
                         "{\"resourceSpans\":[{\"resource\":{\"attributes\":[{\"key\":\"service."
                         "name\",\"value\":{\"stringValue\":\"%.*s\"}}]},\"scopeSpans\":[{"
                         "\"scope\":{\"name\":\"luaproxy\",\"version\":\"%s\"},\"spans\":[",
                         (int)el, esc, LP_VERSION)
              : -1;
    free(esc);
    if (n <= 0 || (size_t)n >= cap) {
        free(p);
        return NULL;
    }
    *len = (size_t)n;
    return p;
}

static const char *const FAIL_NAMES[] = {"", "connect", "timeout", "reset", "status", "protocol"};

typedef struct {
    char *p;
} out_t;

static void lit(out_t *o, const char *s)
{
    size_t n = strlen(s);
    memcpy(o->p, s, n);
    o->p += n;
}

static void esc(out_t *o, const char *s, size_t n)
{
    o->p += lp__accesslog_json_escape(o->p, s, n);
}

static void u64s(out_t *o, uint64_t v)
{
    *o->p++ = '"';
    o->p += lp_u64_to_str(v, 10, o->p);
    *o->p++ = '"';
}

static void hexs(out_t *o, const uint8_t *id, size_t n)
{
    *o->p++ = '"';
    lp_trace_hex(o->p, id, n);
    o->p += 2 * n;
    *o->p++ = '"';
}

/* Attributes after the first get a leading comma. */
static void attr_str(out_t *o, int *first, const char *key, const char *v, size_t n)
{
    if (!*first)
        *o->p++ = ',';
    *first = 0;
    lit(o, "{\"key\":\"");
    lit(o, key);
    lit(o, "\",\"value\":{\"stringValue\":\"");
    esc(o, v, n);
    lit(o, "\"}}");
}

static void attr_int(out_t *o, int *first, const char *key, uint64_t v)
{
    if (!*first)
        *o->p++ = ',';
    *first = 0;
    lit(o, "{\"key\":\"");
    lit(o, key);
    lit(o, "\",\"value\":{\"intValue\":");
    u64s(o, v);
    lit(o, "}}");
}

/* The common head of a span object, up to the attributes' '['. */
static void span_head(out_t *o, const lp_trace_t *t, const uint8_t *span, const uint8_t *parent,
                      const char *name, int kind, uint64_t start, uint64_t end)
{
    lit(o, "{\"traceId\":");
    hexs(o, t->trace_id, 16);
    lit(o, ",\"spanId\":");
    hexs(o, span, 8);
    if (parent) {
        lit(o, ",\"parentSpanId\":");
        hexs(o, parent, 8);
    }
    if (t->tracestate_len) {
        lit(o, ",\"traceState\":\"");
        esc(o, t->tracestate, t->tracestate_len);
        *o->p++ = '"';
    }
    lit(o, ",\"name\":\"");
    lit(o, name);
    lit(o, kind == 2 ? "\",\"kind\":2" : "\",\"kind\":3");
    lit(o, ",\"startTimeUnixNano\":");
    u64s(o, start);
    lit(o, ",\"endTimeUnixNano\":");
    u64s(o, end);
    lit(o, ",\"attributes\":[");
}

static void span_tail(out_t *o, int error, const char *message)
{
    lit(o, "],\"status\":{");
    if (error) {
        lit(o, "\"code\":2");
        if (message) {
            lit(o, ",\"message\":\"");
            lit(o, message);
            *o->p++ = '"';
        }
    }
    lit(o, "}}");
}

/* "host" of a Host value without its port ("[v6]" kept whole). */
static lp_str_t host_only(lp_str_t h)
{
    if (!h.base)
        return (lp_str_t){"", 0};
    size_t n = h.len;
    if (n && h.base[0] == '[') {
        const char *e = memchr(h.base, ']', n);
        n = e ? (size_t)(e - h.base) + 1 : n;
    } else {
        const char *colon = memchr(h.base, ':', n);
        if (colon)
            n = (size_t)(colon - h.base);
    }
    return (lp_str_t){h.base, n};
}

/* Splits "ip:port" / "[ip6]:port". */
static void split_addr(const char *a, lp_str_t *ip, unsigned *port)
{
    const char *colon = strrchr(a, ':');
    *port = colon ? (unsigned)atoi(colon + 1) : 0;
    size_t n = colon ? (size_t)(colon - a) : strlen(a);
    if (n >= 2 && a[0] == '[' && a[n - 1] == ']')
        *ip = (lp_str_t){a + 1, n - 2};
    else
        *ip = (lp_str_t){a, n};
}

/* The parts of the request the spans show. */
typedef struct {
    lp_str_t path, host;
    const char *ip, *up;
} parts_t;

static void parts(const lp_req_t *req, parts_t *pt)
{
    const lp_h1_t *h = &req->h1;
    const char *q = h->path.base ? memchr(h->path.base, '?', h->path.len) : NULL;
    pt->path = (lp_str_t){h->path.base ? h->path.base : "",
                          q ? (size_t)(q - h->path.base) : (h->path.base ? h->path.len : 0)};
    pt->host = host_only(h->host);
    pt->ip = req->client_ip[0] ? req->client_ip : "";
    pt->up = req->upstream ? req->upstream->conf->name : NULL;
}

size_t lp_trace_otlp_bound(const lp_req_t *req)
{
    const lp_trace_t *t = &req->trace;
    parts_t pt;
    parts(req, &pt);
    /* The fixed text (under 1100 bytes a span), plus every variable byte escaped six
     * times over (JSON's six-byte escapes); tests/unit/test_trace.c checks the worst case. */
    return 1600 +
           6 * (pt.path.len + pt.host.len + strlen(pt.ip) + t->tracestate_len +
                (pt.up ? strlen(pt.up) : 0)) +
           t->ntries * (1100 + 6 * (2 * sizeof(t->tries[0].addr) + t->tracestate_len));
}

size_t lp_trace_otlp_spans(char *out, const lp_req_t *req, uint64_t clock_off, uint64_t now)
{
    const lp_trace_t *t = &req->trace;
    parts_t pt;
    parts(req, &pt);
    lp_str_t path = pt.path, host = pt.host;
    const char *ip = pt.ip, *up = pt.up;
    uint64_t off = clock_off;
    const char *method = (req->flags & LP_RF_PARSED) ? llhttp_method_name(req->method) : "HTTP";
    out_t o = {out};
    int status = req->resp.sent_status;
    static const uint8_t none[8] = {0};
    const uint8_t *parent = memcmp(t->parent_id, none, 8) ? t->parent_id : NULL;
    span_head(&o, t, t->span_id, parent, method, 2, req->t_start + off, now + off);
    int first = 1;
    attr_str(&o, &first, "http.request.method", method, strlen(method));
    attr_str(&o, &first, "url.path", path.base, path.len);
    int tls = lp_req_over_tls(req);
    attr_str(&o, &first, "url.scheme", tls ? "https" : "http", tls ? 5 : 4);
    if (host.len)
        attr_str(&o, &first, "server.address", host.base, host.len);
    if (ip[0])
        attr_str(&o, &first, "client.address", ip, strlen(ip));
    /* The TCP peer (OpenTelemetry's meaning): a load balancer in front, when real_ip or a
     * PROXY header named another client. */
    const char *peer = lp_req_peer_ip((lp_req_t *)req);
    if (peer[0])
        attr_str(&o, &first, "network.peer.address", peer, strlen(peer));
    attr_str(&o, &first, "network.protocol.version", req->minor ? "1.1" : "1.0", 3);
    if (status > 0)
        attr_int(&o, &first, "http.response.status_code", (uint64_t)status);
    if (up)
        attr_str(&o, &first, "luaproxy.upstream", up, strlen(up));
    if (req->route_index >= 0)
        attr_int(&o, &first, "luaproxy.route", (uint64_t)req->route_index + 1);
    if (t->tries_lost)
        attr_int(&o, &first, "luaproxy.tries_without_span", t->tries_lost);
    span_tail(&o, status >= 500, NULL);
    for (unsigned i = 0; i < t->ntries; i++) {
        const lp_trace_try_t *tr = &t->tries[i];
        *o.p++ = ',';
        span_head(&o, t, tr->span_id, t->span_id, method, 3, tr->start + off,
                  (tr->end ? tr->end : now) + off);
        first = 1;
        lp_str_t tip;
        unsigned port;
        split_addr(tr->addr, &tip, &port);
        attr_str(&o, &first, "http.request.method", method, strlen(method));
        attr_str(&o, &first, "server.address", tip.base, tip.len);
        attr_int(&o, &first, "server.port", port);
        attr_str(&o, &first, "network.peer.address", tip.base, tip.len);
        attr_int(&o, &first, "network.peer.port", port);
        if (i)
            attr_int(&o, &first, "http.request.resend_count", i);
        if (tr->status)
            attr_int(&o, &first, "http.response.status_code", tr->status);
        const char *err = NULL;
        if (tr->failed)
            err = tr->fail_kind < LP_ARRAY_LEN(FAIL_NAMES) && tr->fail_kind
                      ? FAIL_NAMES[tr->fail_kind]
                      : "failed";
        if (err)
            attr_str(&o, &first, "error.type", err, strlen(err));
        span_tail(&o, tr->failed || tr->status >= 400, err);
    }
    return (size_t)(o.p - out);
}
