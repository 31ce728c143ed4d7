/* HTTP/2 upstream connections and their streams (h2_up.h).
 *
 * Lifetime. A connection (lp_h2u_t) is owned by its endpoint: its memory goes in
 * ops->closed, after lp_ep_close, so every callback and timer of it can test `dead` or
 * LP_EPF_CLOSING. It owns its streams: they are freed by the connection only (at the end of
 * its outermost frame, once nobody needs them, or all of them when it is freed), so a
 * stream never outlives its connection and `st->h2` is always valid. A stream is needed
 * while its try's request holds it (peer.req, the request's try.peer) and while nghttp2
 * knows it (not closed): nghttp2 finds it by stream user data only until it closes it.
 *
 * Re-entrancy. nghttp2's callbacks only record what happened (bytes queued, head complete,
 * closed) and mark the stream; the request pipeline is called afterwards, at the
 * connection's outermost frame (`depth` 0), from h2.c-like entry points of our own (input,
 * written, timers). Calls from the pipeline (lp_h2u_*) never call the pipeline back for
 * another stream: they only send, and leave the rest to a timer at once (TM_KICK). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>
#include "conn.h"
#include "h2_bodyq.h"
#include "h2_up.h"
#include "h2_util.h"
#include "log.h"
#include "lua_vm.h"
#include "relay.h"
#include "req_body.h"
#include "request.h"
#include "tls.h"
#include "trace.h"
#include "upstream.h"
#include "upstream_head.h"
#include "upstream_try.h"

/* The connection timer's modes: connecting (and the TLS handshake), idle without streams,
 * the earliest stream deadline, and "at once, on the next loop turn" (work a call from the
 * pipeline must not do under it). */
enum { TM_CONNECT = LP_EP_TM_OWNER, TM_IDLE, TM_STREAMS, TM_KICK };

/* Each stream's receive window: what an upstream may send ahead of a client that does not
 * read (beyond the client side's high watermark). */
#define H2U_WINDOW (256 * 1024)

/* Request body sent on a stream is kept up to this many bytes: a stream the upstream
 * refused (GOAWAY, REFUSED_STREAM: never processed) goes again with it, whatever its method. */
#define H2U_REPLAY_MAX (64 * 1024)

typedef struct lp_h2u_s lp_h2u_t;

typedef struct lp_h2u_stream_s {
    /* What req->try.peer points at (LP_PF_H2). peer.req: borrowed, the try's request, NULL
     * once it let go; peer.pool: borrowed (pools live as long as the worker); peer.h1 holds
     * the response head, its fields put there as they come (lp_h1_field: the same storage,
     * view and checks as an HTTP/1.1 upstream's parsed head). */
    lp_peer_t peer;
    lp_h2u_t *h2;   /* borrowed: its connection, which frees it (never outlived) */
    lp_list_t link; /* in h2->streams, or in h2->gone once closed and let go */
    lp_list_t work; /* in h2->work (or h2u_leave's pass) while something happened for its
                       request: h2u_leave sees to it (bound only); alone otherwise */
    int32_t id;     /* nghttp2's stream id; 0: never submitted (closed) */
    /* The request body for DATA frames (conn.c stops at the high watermark), its end and a
     * copy of the request's trailers. Owned, as every queue here: a failed stream's body
     * goes back to the request as a copy (stream_give_body_back), never to another stream. */
    lp_h2_bodyq_t out;
    lp_h2_bodyq_t in;     /* owned: response body not yet given to the request (the window) */
    lp_h2_bodyq_t replay; /* owned: request body sent, while it is at most H2U_REPLAY_MAX */
    size_t owed;          /* response bytes given to the request whose window is not given back */
    char *trailers;       /* owned: the response's trailers ("name: value\r\n"), until delivered */
    size_t trailers_len;
    int status;             /* the response's :status (0: not yet) */
    uint64_t read_at;       /* uv_now() ms of the last exchange: the read timeout counts from it */
    uint64_t grpc_deadline; /* uv_now() ms by which a gRPC call must end (grpc-timeout); 0: none */
    uint64_t sent;          /* request body bytes DATA frames took */
    uint32_t close_code;    /* the code nghttp2 closed it with */
    const char *fail_why;   /* borrowed (static text, or h2->why when the connection failed) */
    const char *fail_about; /* borrowed static text or NULL: the detail fail_why announces */
    int fail_status;        /* its answer (502, 504) */
    uint8_t fail_kind;      /* lp_fail_kind_t; LP_FAIL_NONE: not failed */
    uint8_t no_retry;       /* the failure must not be retried (a deadline) */
    uint8_t replay_over;    /* more than H2U_REPLAY_MAX was sent: `replay` was dropped */
    uint8_t refusals;       /* the try's streams sent again before this one (bounded) */
    uint8_t was_full;       /* out passed the high watermark: resume the client below low */
    uint8_t head_in;        /* the final response head arrived */
    uint8_t head_given;     /* ... and went to the request */
    uint8_t in_eof;         /* the upstream's END_STREAM came */
    uint8_t rst_in;         /* the upstream's RST_STREAM came (its code: close_code) */
    uint8_t closed;         /* nghttp2 closed it (or it was never submitted) */
    uint8_t reused;         /* bound to a connection that was up already (a stale one retries) */
    uint8_t gone;           /* closed and let go: in h2->gone, freed at the outermost frame */
} lp_h2u_stream_t;

struct lp_h2u_s {
    lp_endpoint_t ep;         /* the socket (endpoint.h); this is freed with it (ops->closed) */
    uv_connect_t connect_req; /* connect_req.data = this */
    lp_pool_t *pool;          /* borrowed: the worker's pool for its address (lives as long) */
    nghttp2_session *s;       /* owned */
    lp_list_t link;           /* in pool->h2conns until it dies */
    /* Its streams (by lp_h2u_stream_t.link, owned): `streams` those still needed, `gone`
     * those closed and let go, freed at depth 0. `work` (by lp_h2u_stream_t.work): the
     * bound streams with something for their request. Lists and counts, so that an event
     * costs its own streams' work, not a walk over all of them. */
    lp_list_t streams, gone;
    lp_list_t work;
    unsigned nlive;       /* streams not closed (toward the stream limit) */
    unsigned nbound;      /* streams a request holds (peer.req): the connection is busy */
    unsigned max_streams; /* upstreams.NAME.max_streams when it was made */
    int32_t goaway_last;  /* a GOAWAY's last stream id: the upstream took streams up to it */
    uint64_t idle_ms;     /* keepalive_timeout when it was made */
    unsigned depth;       /* our frames on the stack: the pipeline is called, streams freed
                             and bytes sent at 0 */
    char why[160];        /* the text of its failure (streams borrow it) */
    uint8_t ready;        /* connected (and TLS established with ALPN h2) */
    uint8_t handshake;    /* TCP connected, TLS handshake in progress */
    uint8_t goaway;       /* GOAWAY received: no new streams */
    uint8_t dead;         /* failed or closing: no new streams, no more I/O */
    uint8_t fatal;        /* the session or memory failed: it dies at the end of the frame */
    uint8_t more;         /* output left after a send round: send again on the next turn */
    uint8_t rearm;        /* a stream's deadline may be earlier than TM_STREAMS's: h2u_arm looks */
};

static const lp_endpoint_ops_t h2u_ops;

static const lp_timeouts_t *T(const lp_h2u_t *h)
{
    return &lp_ep_worker(&h->ep)->config->timeouts;
}

static uint64_t now_ms(const lp_h2u_t *h)
{
    return uv_now(h->ep.env->loop);
}

static lp_h2u_t *h2u_of(lp_endpoint_t *ep)
{
    return LP_CONTAINER_OF(ep, lp_h2u_t, ep);
}

static lp_h2u_stream_t *st_of(const lp_peer_t *p)
{
    return LP_CONTAINER_OF(p, lp_h2u_stream_t, peer);
}

/* ---- streams ---- */

static void stream_free(lp_h2u_stream_t *st)
{
    lp_list_remove(&st->link);
    lp_list_remove(&st->work); /* (alone: stays so) */
    lp_h2_bodyq_free(&st->out);
    lp_h2_bodyq_free(&st->in);
    lp_h2_bodyq_free(&st->replay);
    free(st->trailers);
    free(st);
}

/* One more in this worker's upstream HTTP/2 counter `cell` (LP_WM_H2U_*, h2_stats.c). */
static void h2u_count(const lp_h2u_t *h, int cell, uint64_t n)
{
    LP_M_ADD(&lp_ep_worker(&h->ep)->m_cells[cell], n);
}

/* Something happened for the stream's request (a frame, its close, a failure, the client
 * side going on): h2u_leave sees to it. A stream no request holds has nobody to tell. */
static void stream_mark(lp_h2u_stream_t *st)
{
    if (!lp_list_empty(&st->work) || !st->peer.req)
        return; /* marked already, or nobody to tell */
    lp_list_insert_tail(&st->h2->work, &st->work);
}

/* Closed and let go: nothing needs the stream any more (nghttp2 forgot it, no request
 * holds it); it waits in h2->gone for the outermost frame, which frees it. */
static void stream_check_gone(lp_h2u_stream_t *st)
{
    if (st->gone || !st->closed || st->peer.req)
        return;
    st->gone = 1;
    lp_list_remove(&st->link);
    lp_list_insert_tail(&st->h2->gone, &st->link);
}

/* The request lets go of the stream (it ended, failed or moved on): reset unless it is
 * over. */
static void stream_unbind(lp_h2u_stream_t *st)
{
    lp_req_t *req = st->peer.req;
    lp_h2u_t *h = st->h2;
    if (req) {
        if (req->try.peer == &st->peer)
            req->try.peer = NULL;
        st->peer.req = NULL;
        h->nbound--;
    }
    lp_list_remove(&st->work);
    if (!st->closed && st->id > 0 && !h->dead &&
        !nghttp2_submit_rst_stream(h->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL))
        h2u_count(h, LP_WM_H2U_RST_SENT, 1);
    lp_h2_bodyq_free(&st->in);
    if (st->owed && !st->closed && st->id > 0 && !h->dead)
        nghttp2_session_consume_stream(h->s, st->id, st->owed);
    st->owed = 0;
    stream_check_gone(st);
}

/* Why a stream closed before its response ended, when the upstream reset it (its
 * RST_STREAM's code, RFC 9113 7), refused it by GOAWAY, or nghttp2 reset it for a response
 * that broke HTTP/2's rules (`ours`): static text, as the stream may borrow it past
 * h2->why's next use (another stream's failure or the connection's own rewrites that). */
static const char *stream_reset_why(const lp_h2u_stream_t *st, int ours)
{
#define RST(code)  "upstream reset the stream (RST_STREAM " code ")"
#define OURS(code) "invalid response: the proxy reset the stream (" code ")"
    static const char *const mine[] = {
        OURS("NO_ERROR"),
        OURS("PROTOCOL_ERROR"),
        OURS("INTERNAL_ERROR"),
        OURS("FLOW_CONTROL_ERROR"),
        OURS("SETTINGS_TIMEOUT"),
        OURS("STREAM_CLOSED"),
        OURS("FRAME_SIZE_ERROR"),
        OURS("REFUSED_STREAM"),
        OURS("CANCEL"),
        OURS("COMPRESSION_ERROR"),
        OURS("CONNECT_ERROR"),
        OURS("ENHANCE_YOUR_CALM"),
        OURS("INADEQUATE_SECURITY"),
        OURS("HTTP_1_1_REQUIRED"),
    };
#undef OURS
    if (ours)
        return st->close_code < LP_ARRAY_LEN(mine)
                   ? mine[st->close_code]
                   : "invalid response: the proxy reset the stream (unknown code)";
    static const char *const why[] = {
        RST("NO_ERROR"),
        RST("PROTOCOL_ERROR"),
        RST("INTERNAL_ERROR"),
        RST("FLOW_CONTROL_ERROR"),
        RST("SETTINGS_TIMEOUT"),
        RST("STREAM_CLOSED"),
        RST("FRAME_SIZE_ERROR"),
        RST("REFUSED_STREAM"),
        RST("CANCEL"),
        RST("COMPRESSION_ERROR"),
        RST("CONNECT_ERROR"),
        RST("ENHANCE_YOUR_CALM"),
        RST("INADEQUATE_SECURITY"),
        RST("HTTP_1_1_REQUIRED"),
    };
#undef RST
    if (!st->rst_in)
        return "upstream refused the stream (GOAWAY: not processed)";
    return st->close_code < LP_ARRAY_LEN(why)
               ? why[st->close_code]
               : "upstream reset the stream (RST_STREAM, unknown code)";
}

static void stream_fail_later(lp_h2u_stream_t *st, int kind, int status, const char *why)
{
    if (!st->fail_kind) {
        st->fail_kind = (uint8_t)kind;
        st->fail_status = status;
        st->fail_why = why;
    }
    stream_mark(st);
}

static void h2u_leave(lp_h2u_t *h, int full);

/* ---- the request head ---- */

/* The head (upstream_head.h) as HTTP/2 fields, the pseudo-headers first. */
static void build_head(lp_req_t *req, lp_pool_t *t, lp_h2_nvs_t *l)
{
    lp_uphead_t u;
    if (lp_uphead_build(&u, req, t, LP_UPHEAD_H2)) {
        l->oom = 1;
        return;
    }
    size_t mlen = strlen(u.method);
    size_t bytes = 7 + mlen + 12 + 10 + u.authority.len + 5 + u.path.len;
    for (unsigned i = 0; i < u.n; i++)
        bytes += u.fields[i].name.len + u.fields[i].value.len;
    lp_h2_nvs_reserve(l, u.n + 4, bytes);
    lp_h2_nvs_add(l, ":method", 7, u.method, mlen);
    lp_h2_nvs_add(l, ":scheme", 7, t->tls ? "https" : "http", t->tls ? 5 : 4);
    lp_h2_nvs_add(l, ":authority", 10, u.authority.base, u.authority.len);
    lp_h2_nvs_add(l, ":path", 5, u.path.base, u.path.len);
    for (unsigned i = 0; i < u.n; i++) {
        const lp_header_t *hd = &u.fields[i];
        lp_h2_nvs_add(l, hd->name.base, hd->name.len, hd->value.base, hd->value.len);
    }
    lp_uphead_free(&u);
}

/* grpc-timeout ("100m", "5S": 1-8 digits and a unit) in ms, rounded up; 0: none or bad. */
static uint64_t grpc_timeout_ms(const lp_h1_t *h)
{
    const lp_header_t *g = lp_h1_find(h, "grpc-timeout", 12);
    if (!g || g->value.len < 2 || g->value.len > 9)
        return 0;
    uint64_t v = 0;
    for (size_t i = 0; i + 1 < g->value.len; i++) {
        char ch = g->value.base[i];
        if (ch < '0' || ch > '9')
            return 0;
        v = v * 10 + (uint64_t)(ch - '0');
    }
    switch (g->value.base[g->value.len - 1]) {
    case 'H':
        return v * 3600000;
    case 'M':
        return v * 60000;
    case 'S':
        return v * 1000;
    case 'm':
        return v ? v : 1;
    case 'u':
        return v / 1000 + 1;
    case 'n':
        return v / 1000000 + 1;
    default:
        return 0;
    }
}

static ssize_t body_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    lp_h2u_stream_t *st = src->ptr;
    ssize_t n = lp_h2_bodyq_source(&st->out, s, id, buf, length, flags);
    if (n <= 0)
        return n;
    if (!st->replay_over &&
        (st->sent + (size_t)n > H2U_REPLAY_MAX ||
         lp_h2_bodyq_add(&st->replay, st->h2->ep.env->bufs, (const char *)buf, (size_t)n))) {
        st->replay_over = 1;
        lp_h2_bodyq_free(&st->replay);
    }
    st->sent += (size_t)n;
    st->read_at = now_ms(st->h2); /* the upstream takes the body: it is not late */
    if (st->was_full && st->out.bytes <= LP_LOW_WATERMARK)
        stream_mark(st); /* the client's body may move again */
    return n;
}

/* A new stream on h for req's try: the head, what there is of the body (the request's:
 * gathered, or given back by a failed stream of the try), submitted. `prev` (borrowed, read
 * only, may be NULL): the try's stream that was refused (GOAWAY, REFUSED_STREAM), whose
 * refusal count and gRPC deadline go on. NULL when out of memory: nothing changed, the
 * body is still the request's. */
static lp_h2u_stream_t *stream_new(lp_h2u_t *h, lp_req_t *req, const lp_h2u_stream_t *prev)
{
    lp_worker_t *w = lp_ep_worker(&h->ep);
    lp_h2u_stream_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NULL;
    if (!req->resp.arena && !(req->resp.arena = lp_buf_get(&w->bufs, LP_BUF_SMALL))) {
        free(st);
        return NULL;
    }
    st->h2 = h;
    lp_list_init(&st->work);
    st->peer.flags = LP_PF_H2 | LP_PF_CONNECTED;
    st->peer.pool = h->pool;
    st->peer.upstream = req->upstream;
    lp_list_init(&st->peer.link);
    lp_list_init(&st->peer.all);
    st->reused = h->ready;
    st->read_at = now_ms(h);
    lp_peer_resp_init(&st->peer, req, NULL); /* the head comes as fields (lp_h1_field) */
    if (prev) {
        st->refusals = (uint8_t)(prev->refusals + 1);
        st->grpc_deadline = prev->grpc_deadline;
    } else if (req->flags & LP_RF_GRPC) {
        uint64_t ms = grpc_timeout_ms(&req->h1);
        if (ms)
            st->grpc_deadline = st->read_at + ms;
    }
    int oom = 0;
    if (lp_req_body_replaced(req)) {
        /* req:set_body(): the whole replacement now; the client's body is read and dropped. */
        oom = lp_h2_bodyq_add(&st->out, &w->bufs, req->new_body->data, req->new_body_len);
        st->peer.body_out = req->new_body_len;
        st->out.eof = 1;
    } else {
        lp_buf_t *gathered;
        size_t glen;
        lp_conn_take_body(req, &gathered, &glen);
        if (gathered && glen) {
            oom = lp_h2_bodyq_add(&st->out, &w->bufs, gathered->data, glen);
            st->peer.body_out = glen;
        }
        if (req->state == LP_RS_DONE && lp_h2_bodyq_end(&st->out, req->trailers, req->trailers_len))
            oom = 1;
    }
    /* A body given back by a failed stream may fill this one at once, and the client may be
     * paused behind that stream: either way the client goes on when this one drains. */
    if (st->out.bytes >= LP_HIGH_WATERMARK || (req->flags & LP_RF_READ_PAUSED))
        st->was_full = 1;
    lp_h2_nvs_t l = {0};
    build_head(req, h->pool, &l);
    nghttp2_nv *nv = oom ? NULL : lp_h2_nvs_done(&l);
    if (!nv) {
        lp_h2_nvs_free(&l);
        lp_h2_bodyq_free(&st->out);
        free(st);
        return NULL;
    }
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = body_read};
    int bodiless = st->out.eof && !st->out.head && !st->out.trailers;
    int32_t id = nghttp2_submit_request(h->s, NULL, nv, l.n, bodiless ? NULL : &prd, st);
    lp_h2_nvs_free(&l);
    if (id < 0) {
        lp_h2_bodyq_free(&st->out);
        free(st);
        return NULL;
    }
    st->id = id;
    lp_list_insert_tail(&h->streams, &st->link);
    h->nlive++;
    h2u_count(h, LP_WM_H2U_STREAMS, 1);
    st->peer.req = req;
    h->nbound++;
    h->rearm = 1; /* its deadlines may be the earliest */
    req->try.peer = &st->peer;
    st->peer.nrequests = 1;
    return st;
}

/* ---- connections ---- */

static void h2u_die(lp_h2u_t *h, int kind, int status, const char *why);
static int h2u_connect(lp_h2u_t *h);

/* The response head was refused (lp_h1_field, lp_h1_fields_end): 502, not retried, as an
 * HTTP/1.1 upstream's invalid head. */
static void stream_head_refused(lp_h2u_stream_t *st)
{
    if (!st->fail_kind) /* the parser's reasons are static text */
        st->fail_about = st->peer.h1.err_reason ? st->peer.h1.err_reason : "parse error";
    stream_fail_later(st, LP_FAIL_PROTOCOL, 502, "invalid response");
    st->no_retry = 1;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    lp_h2u_stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st || !st->peer.req || f->hd.type != NGHTTP2_HEADERS)
        return 0;
    const char *n = (const char *)name, *v = (const char *)value;
    if (st->head_in) { /* trailers */
        if ((nlen && n[0] == ':') || lp_h2_trailer_forbidden(n, nlen))
            return 0;
        if (st->trailers_len + nlen + vlen > st->peer.h1.max_header_size ||
            lp_h2_text_add(&st->trailers, &st->trailers_len, n, nlen, v, vlen)) {
            stream_fail_later(st, LP_FAIL_PROTOCOL, 502, "response trailers too large");
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return 0;
    }
    if (nlen && n[0] == ':') {
        if (nlen == 7 && !memcmp(n, ":status", 7) && vlen == 3) {
            st->status = (v[0] - '0') * 100 + (v[1] - '0') * 10 + (v[2] - '0');
            /* Each head starts anew: a 1xx one is dropped, the final one follows. */
            lp_h1_fields_begin(&st->peer.h1);
        }
        return 0;
    }
    /* Its size is counted there too (header_bytes), against the same limit as an HTTP/1.1
     * upstream's head. */
    if (lp_h1_field(&st->peer.h1, n, nlen, v, vlen)) {
        stream_head_refused(st);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    lp_h2u_t *h = ud;
    if (f->hd.type == NGHTTP2_GOAWAY) {
        /* Streams above its last id are closed by nghttp2 (REFUSED_STREAM): they go again
         * on another connection. This one takes no new stream. */
        h->goaway = 1;
        h->goaway_last = f->goaway.last_stream_id;
        h2u_count(h, LP_WM_H2U_GOAWAY_RECV, 1);
        lp_log_info("upstream %s: GOAWAY (last stream %d, code %u)", h->pool->addr.text,
                    (int)f->goaway.last_stream_id, f->goaway.error_code);
        return 0;
    }
    if (f->hd.type == NGHTTP2_RST_STREAM)
        h2u_count(h, LP_WM_H2U_RST_RECV, 1);
    lp_h2u_stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (!st)
        return 0;
    if (f->hd.type == NGHTTP2_RST_STREAM)
        st->rst_in = 1;
    if (f->hd.type == NGHTTP2_HEADERS && !st->head_in && st->status >= 200)
        st->head_in = 1;
    if ((f->hd.type == NGHTTP2_HEADERS || f->hd.type == NGHTTP2_DATA) &&
        (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        st->in_eof = 1;
    st->read_at = now_ms(h);
    stream_mark(st);
    return 0;
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    lp_h2u_t *h = ud;
    lp_h2u_stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    nghttp2_session_consume_connection(s, len); /* each stream's window bounds the rest */
    if (!st || !st->peer.req) {
        nghttp2_session_consume_stream(s, id, len); /* nobody reads it: dropped */
        return 0;
    }
    if (lp_h2_bodyq_add(&st->in, h->ep.env->bufs, (const char *)data, len)) {
        h->fatal = 1;
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    }
    st->read_at = now_ms(h);
    stream_mark(st);
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    lp_h2u_t *h = ud;
    lp_h2u_stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || st->closed)
        return 0;
    st->closed = 1;
    st->close_code = code;
    h->nlive--;
    h2u_count(h, LP_WM_H2U_STREAMS_CLOSED, 1);
    stream_mark(st);
    stream_check_gone(st);
    return 0;
}

static int on_frame_not_send(nghttp2_session *s, const nghttp2_frame *f, int err, void *ud)
{
    lp_h2u_t *h = ud;
    lp_h2u_stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (f->hd.type != NGHTTP2_HEADERS || !st || st->closed)
        return 0;
    /* A stream that could not start (GOAWAY came first): nothing reached the upstream;
     * nghttp2 closes it (REFUSED_STREAM) next. */
    stream_mark(st);
    (void)h;
    return 0;
}

static lp_h2u_t *h2u_new(lp_worker_t *w, lp_req_t *req, lp_pool_t *t)
{
    lp_h2u_t *h = calloc(1, sizeof(*h));
    if (!h)
        return NULL;
    const lp_upstream_conf_t *uc = req->upstream->conf;
    h->pool = t;
    h->max_streams = uc->max_streams ? uc->max_streams : 100;
    h->idle_ms = uc->keepalive_timeout;
    lp_list_init(&h->streams);
    lp_list_init(&h->gone);
    lp_list_init(&h->work);
    nghttp2_session_callbacks *cb;
    if (nghttp2_session_callbacks_new(&cb)) {
        free(h);
        return NULL;
    }
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt)) {
        nghttp2_session_callbacks_del(cb);
        free(h);
        return NULL;
    }
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cb, on_frame_not_send);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    nghttp2_option_set_peer_max_concurrent_streams(opt, h->max_streams);
    int rv = nghttp2_session_client_new2(&h->s, cb, h, opt);
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (rv) {
        free(h);
        return NULL;
    }
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, H2U_WINDOW},
    };
    uint64_t conn_win = (uint64_t)H2U_WINDOW * h->max_streams;
    if (conn_win > 0x7fffffff)
        conn_win = 0x7fffffff;
    if (nghttp2_submit_settings(h->s, NGHTTP2_FLAG_NONE, iv, LP_ARRAY_LEN(iv)) ||
        nghttp2_session_set_local_window_size(h->s, NGHTTP2_FLAG_NONE, 0, (int32_t)conn_win)) {
        nghttp2_session_del(h->s);
        free(h);
        return NULL;
    }
    lp_ep_init(&h->ep, &w->ep_env, &h2u_ops);
    lp_list_insert_tail(&t->h2conns, &h->link);
    h2u_count(h, LP_WM_H2U_CONNS, 1);
    return h;
}

/* The stream limit: ours, or the upstream's SETTINGS_MAX_CONCURRENT_STREAMS if lower. */
static int h2u_has_room(const lp_h2u_t *h)
{
    /* nghttp2 takes no new stream once a GOAWAY went either way (ours after a protocol
     * error): such streams would be refused at once, and sent again here, without end. */
    if (h->dead || h->goaway || (h->ep.flags & LP_EPF_CLOSING) ||
        !nghttp2_session_check_request_allowed(h->s))
        return 0;
    uint32_t peer =
        nghttp2_session_get_remote_settings(h->s, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    uint32_t lim = h->max_streams < peer ? h->max_streams : peer;
    return h->nlive < lim;
}

static void h2u_send(lp_h2u_t *h)
{
    if (h->depth || h->dead || !h->ready)
        return;
    h->more = 0;
    for (int round = 0; !(h->ep.flags & LP_EPF_CLOSING); round++) {
        if (round == 16) {
            h->more = 1; /* enough for one turn: the rest on the next (TM_KICK) */
            break;
        }
        size_t made = lp_h2_fill(h->s, &h->ep, &h->fatal);
        if (h->fatal || (h->ep.flags & LP_EPF_CLOSING))
            break;
        lp_ep_flush(&h->ep);
        if (!made || lp_ep_queued(&h->ep) > LP_LOW_WATERMARK || !nghttp2_session_want_write(h->s))
            break;
    }
}

/* When the stream's request gives up on the upstream: the read timeout while the request
 * waits on the upstream (not while the client or Lua holds the body back), total_timeout
 * until the head, the gRPC deadline. 0: none. */
static uint64_t stream_deadline(const lp_h2u_stream_t *st, const char **why, int *no_retry)
{
    const lp_req_t *req = st->peer.req;
    uint64_t d = 0;
    *why = "read timed out";
    *no_retry = 0;
    if (!(st->peer.flags & (LP_PF_PAUSED | LP_PF_LUA)))
        d = st->read_at + T(st->h2)->read;
    if (req->try.deadline && !st->head_given && (!d || req->try.deadline < d)) {
        d = req->try.deadline;
        *why = "total_timeout reached";
        *no_retry = 1;
    }
    if (st->grpc_deadline && (!d || st->grpc_deadline < d)) {
        d = st->grpc_deadline;
        *why = "grpc-timeout reached";
        *no_retry = 1;
    }
    return d;
}

/* The connection's timer: at once when there is work left (TM_KICK), the earliest stream
 * deadline (TM_STREAMS), or idle. Lazy, as deadlines mostly move later (each exchange
 * pushes its read timeout): an armed TM_STREAMS stays, and when it runs it checks every
 * stream and arms again; only what can bring a deadline earlier (a new stream, a read
 * timeout counting again) has the streams looked at now (`rearm`). */
static void h2u_arm(lp_h2u_t *h)
{
    if (!h->ready || h->dead)
        return; /* the connect timer runs */
    if (h->more || !lp_list_empty(&h->work)) {
        lp_ep_timer(&h->ep, TM_KICK, 0);
        return;
    }
    if (!h->nbound) {
        h->rearm = 0;
        if (!h->nlive)
            lp_ep_timer(&h->ep, TM_IDLE, h->idle_ms);
        else
            lp_ep_timer(&h->ep, LP_EP_TM_NONE, 0);
        return;
    }
    if (h->ep.tmode == TM_STREAMS && h->ep.deadline && !h->rearm)
        return;
    h->rearm = 0;
    uint64_t next = 0;
    for (lp_list_t *it = h->streams.next; it != &h->streams; it = it->next) {
        lp_h2u_stream_t *st = LP_CONTAINER_OF(it, lp_h2u_stream_t, link);
        if (!st->peer.req)
            continue;
        const char *why;
        int nr;
        uint64_t d = stream_deadline(st, &why, &nr);
        if (d && (!next || d < next))
            next = d;
    }
    uint64_t now = now_ms(h);
    if (next)
        lp_ep_timer(&h->ep, TM_STREAMS, next > now ? next - now : 0);
    else
        lp_ep_timer(&h->ep, LP_EP_TM_NONE, 0);
}

/* ---- the response, given to the request ---- */

static void stream_retry_on(lp_h2u_stream_t *st, int *done);

/* The try goes on without the stream (again on another connection, or to another
 * target): the request body it took, whole (what went out, kept in `replay`, then what was
 * still to go), goes back to the request, as its gathered body, which the next stream or
 * connection sends first. A replacement body (req:set_body()) is the request's already.
 * -1 when out of memory: the try cannot go on. */
static int stream_give_body_back(lp_h2u_stream_t *st, lp_req_t *req)
{
    size_t n = st->replay.bytes + st->out.bytes;
    if (lp_req_body_replaced(req) || !n)
        return 0;
    lp_buf_t *b = lp_buf_get(&req->w->bufs, n);
    if (!b)
        return -1;
    lp_h2_bodyq_copy(&st->replay, b->data);
    lp_h2_bodyq_copy(&st->out, b->data + st->replay.bytes);
    lp_conn_give_body_back(req, b, n);
    return 0;
}

/* The try failed on this stream: a new stream for the same try (refused, or a stale
 * connection), another target, or the client gets the failure. */
static void stream_fail(lp_h2u_stream_t *st)
{
    lp_req_t *req = st->peer.req;
    lp_h2u_t *h = st->h2;
    lp_pool_t *t = h->pool;
    int kind = st->fail_kind, status = st->fail_status;
    const char *why = st->fail_why, *about = st->fail_about;
    /* The body the stream took can go again only while it holds all of it. */
    int body_ok = !st->replay_over || lp_req_body_replaced(req);
    int fresh = !(req->flags & LP_RF_RESP_STARTED) && !st->head_given && !st->no_retry &&
                !lp__try_deadline_passed(req) && body_ok;
    /* Refused (GOAWAY above its id, REFUSED_STREAM): the upstream did nothing with it, so
     * it goes again on another connection, whatever its method. So does an idempotent
     * bodiless request whose connection was up already and was lost under it before any
     * answer (a stale one, as a pooled HTTP/1.1 connection). Any other reset of the stream
     * by the upstream (RFC 9113 8.7: it may have acted on the request), or a connection lost
     * after its GOAWAY said it took the stream, is a failure of the try, which the route's
     * retries decide (`elsewhere`), and the connection is not stale. */
    int stale = st->reused && kind == LP_FAIL_RESET && !st->rst_in &&
                !(h->goaway && st->id <= h->goaway_last) && lp__try_replayable(req);
    int again = fresh && st->refusals < 3 && (st->close_code == NGHTTP2_REFUSED_STREAM || stale);
    int elsewhere = !(req->flags & LP_RF_RESP_STARTED) && !again && !st->no_retry && body_ok &&
                    (kind == LP_FAIL_CONNECT || (!st->head_given && lp__try_replayable(req)));
    if ((again || elsewhere) && stream_give_body_back(st, req))
        again = elsewhere = 0;
    const char *addr = t->addr.text; /* pools live as long as the worker */
    if (again) {
        lp_log_debug("upstream %s: stream %d %s; again on another connection", addr, (int)st->id,
                     why);
        stream_unbind(st);
        lp_h2u_t *nh = NULL;
        for (lp_list_t *it = t->h2conns.next; it != &t->h2conns && !nh; it = it->next) {
            lp_h2u_t *c = LP_CONTAINER_OF(it, lp_h2u_t, link);
            if (c != h && h2u_has_room(c))
                nh = c;
        }
        int made = !nh;
        if (made)
            nh = h2u_new(req->w, req, t);
        int cell = st->close_code == NGHTTP2_REFUSED_STREAM ? LP_WM_H2U_RETRY_REFUSED
                                                            : LP_WM_H2U_RETRY_STALE;
        if (nh && stream_new(nh, req, st)) {
            h2u_count(h, cell, 1);
            nh->depth++;
            if (made && h2u_connect(nh))
                h2u_die(nh, LP_FAIL_CONNECT, 502, nh->why);
            h2u_leave(nh, made);
            return;
        }
        if (nh && made) {
            nh->dead = 1;
            lp_list_remove(&nh->link);
            lp_list_init(&nh->link);
            lp_ep_close(&nh->ep);
        }
    } else {
        stream_unbind(st);
    }
    lp_upstream_try_end(req, 1);
    req->try.fail_kind = (uint8_t)kind;
    req->try.fail_status = 0;
    if (elsewhere && lp__try_may_retry(req)) {
        lp_log_warn("upstream %s: %s; retrying (try %d)%s", addr, why, req->try.tries + 1,
                    lp_trace_tag(req));
        (void)lp__try_next(req);
        return;
    }
    lp_log_warn("upstream %s: %s%s%s (%s %.*s)%s", addr, why, about ? ": " : "", about ? about : "",
                llhttp_method_name(req->method), (int)req->h1.path.len, req->h1.path.base,
                lp_trace_tag(req));
    (void)lp_conn_upstream_failed(req, status, why);
}

/* The final head arrived (its fields are in peer.h1 already): then the response phase.
 * Sets *done when the stream is no longer the request's. */
static void stream_give_head(lp_h2u_stream_t *st, int *done)
{
    lp_req_t *req = st->peer.req;
    lp_h1_t *rh = &st->peer.h1;
    /* A head that ended the stream has no body: said so, so that an HTTP/2 client gets a
     * trailers-only response too (h2.c). */
    int bodiless = st->in_eof && !st->in.head && !(rh->flags & LP_H1F_LENGTH) && !st->trailers &&
                   st->status != 204 && st->status != 304;
    st->head_given = 1;
    /* That content-length is ours: it may take one of the slots beyond the upstream's limit
     * (LP_HEADERS_SPARE), so a head of exactly max_headers fields is not refused for it. */
    if (bodiless && rh->max_headers < req->cap_headers)
        rh->max_headers++;
    if ((bodiless && lp_h1_field(rh, "content-length", 14, "0", 1)) ||
        lp_h1_fields_end(rh, st->status)) {
        stream_head_refused(st);
        stream_fail(st);
        *done = 1;
        return;
    }
    stream_retry_on(st, done);
    if (*done)
        return;
    req->try.deadline = 0; /* total_timeout ends with the response head */
    st->peer.flags |= LP_PF_RESP_BYTES;
    int hr = lp_conn_response_head(req, &st->peer.h1);
    if (hr == LP_GONE || st->peer.req != req) {
        *done = 1;
        return;
    }
    if (hr == LP_AGAIN) {
        st->peer.flags |= LP_PF_LUA; /* the response phase waits: so does the body */
        return;
    }
    if (hr == 500) {
        lp_conn_lua_resumed(req, LP_PHASE_RESPONSE, LP_ERROR); /* lets go of the stream */
        *done = 1;
        return;
    }
    if (hr) {
        stream_fail_later(st, LP_FAIL_PROTOCOL, hr, "response head too large");
        st->no_retry = 1;
        stream_fail(st);
        *done = 1;
    }
}

/* retry_on: as for HTTP/1.1 (upstream.c), a listed status sends an idempotent, bodiless
 * request to another target before anything reaches the client. */
static void stream_retry_on(lp_h2u_stream_t *st, int *done)
{
    lp_req_t *req = st->peer.req;
    lp_upstream_rt_t *u = req->upstream;
    int status = st->status;
    if (!lp_status_in(&u->conf->retry_on, status) || !lp__try_replayable(req) ||
        (req->flags & LP_RF_RESP_STARTED) || !lp__try_may_retry(req))
        return;
    req->resp.sent_status = status; /* counted by passive checks when they name it */
    stream_unbind(st);
    lp_upstream_try_end(req, 1);
    req->resp.sent_status = 0;
    req->try.fail_kind = LP_FAIL_STATUS;
    req->try.fail_status = status;
    lp_log_info("upstream %s: status %d, retrying (try %d)%s", st->h2->pool->addr.text, status,
                req->try.tries + 1, lp_trace_tag(req));
    (void)lp__try_next(req);
    *done = 1;
}

/* The response body as the client side can take it, then its end. */
static void stream_give_body(lp_h2u_stream_t *st)
{
    lp_req_t *req = st->peer.req;
    lp_h2u_t *h = st->h2;
    while (st->in.head && !(st->peer.flags & (LP_PF_PAUSED | LP_PF_LUA))) {
        size_t len;
        lp_buf_t *b;
        const char *at = lp_h2_bodyq_shift(&st->in, &len, &b);
        st->owed += len;
        int rc = lp_conn_response_body(req, at, len, b);
        lp_buf_unref(b);
        if (st->peer.req != req)
            return;
        if (rc == LP_AGAIN) {
            st->peer.flags |= LP_PF_LUA; /* a response_body filter waits (lp_peer_continue) */
            break;
        }
        if (rc != LP_OK) {
            /* A response_body filter failed: not the upstream's fault. */
            stream_unbind(st);
            lp_upstream_try_end(req, 0);
            (void)lp_conn_upstream_failed(req, 500, "response_body filter failed");
            return;
        }
        if (lp_conn_req_full(req)) {
            lp_conn_flush(req->conn);
            st->peer.flags |= LP_PF_PAUSED; /* lp_peer_resume when the client drained */
            if (st->peer.req != req)
                return;
            break;
        }
    }
    if (st->owed && !(st->peer.flags & LP_PF_PAUSED) && !st->closed && !h->dead) {
        /* The client side took them: the upstream may send as much again. */
        nghttp2_session_consume_stream(h->s, st->id, st->owed);
        st->owed = 0;
    }
    if (st->in.head || !st->in_eof || (st->peer.flags & (LP_PF_PAUSED | LP_PF_LUA)))
        return;
    /* Complete: the trailers go with the request, the stream is let go first (finishing
     * the request must not abort it). */
    if (st->trailers) {
        free(req->resp.trailers);
        req->resp.trailers = st->trailers;
        req->resp.trailers_len = st->trailers_len;
        st->trailers = NULL;
    }
    stream_unbind(st);
    lp_upstream_try_end(req, 0);
    (void)lp_conn_response_done(req);
}

/* What happened to the stream, for its request. */
static void stream_work(lp_h2u_stream_t *st)
{
    lp_req_t *req = st->peer.req;
    lp_req_hold(req);
    int done = 0;
    if (st->fail_kind) {
        stream_fail(st);
    } else {
        if (st->head_in && !st->head_given)
            stream_give_head(st, &done);
        if (!done && st->peer.req == req && st->head_given && !(st->peer.flags & LP_PF_LUA))
            stream_give_body(st);
        if (st->peer.req == req && st->closed && !st->in_eof) {
            /* Closed before its response ended, the connection going on: reset by the
             * upstream, refused by its GOAWAY, or reset by nghttp2 for a response that broke
             * HTTP/2's rules (a stream error: DATA beyond its content-length, a malformed
             * field), which is the upstream's invalid response, not retried. */
            if (st->rst_in || st->close_code == NGHTTP2_REFUSED_STREAM) {
                stream_fail_later(st, LP_FAIL_RESET, 502, stream_reset_why(st, 0));
            } else {
                stream_fail_later(st, LP_FAIL_PROTOCOL, 502, stream_reset_why(st, 1));
                st->no_retry = 1;
            }
            stream_fail(st);
        }
        if (st->peer.req == req && st->was_full && st->out.bytes <= LP_LOW_WATERMARK) {
            st->was_full = 0;
            lp_conn_resume_body(req);
        }
    }
    /* What was queued for the client goes now (a stream's messages as they come). */
    if (!lp_req_ended(req) && req->conn && !(req->conn->ep.flags & LP_EPF_CLOSING))
        lp_conn_flush(req->conn);
    lp_req_drop(req);
}

/* The end of one of our frames: at the outermost one, the streams' requests hear what
 * happened (`full`: our own entry points; the pipeline's calls leave that to TM_KICK),
 * streams nobody needs go, and the session's output is sent. */
static void h2u_leave(lp_h2u_t *h, int full)
{
    if (--h->depth)
        return;
    for (int pass = 0; pass < 4; pass++) {
        int again = 0;
        if (full && !lp_list_empty(&h->work)) {
            /* This pass sees to the streams marked so far; those marked meanwhile (and
             * these again) wait for the next. */
            lp_list_t todo = h->work;
            todo.next->prev = todo.prev->next = &todo;
            lp_list_init(&h->work);
            h->depth++;
            while (!lp_list_empty(&todo)) {
                lp_h2u_stream_t *st = LP_CONTAINER_OF(todo.next, lp_h2u_stream_t, work);
                lp_list_remove(&st->work);
                stream_work(st); /* may let go of others: they leave todo */
                again = 1;
            }
            h->depth--;
        }
        if (!h->dead) {
            while (!lp_list_empty(&h->gone)) {
                lp_h2u_stream_t *st = LP_CONTAINER_OF(h->gone.next, lp_h2u_stream_t, link);
                nghttp2_session_set_stream_user_data(h->s, st->id, NULL); /* may be gone */
                stream_free(st);
            }
        }
        if (h->fatal && !h->dead) {
            h->depth++;
            h2u_die(h, LP_FAIL_PROTOCOL, 502, "HTTP/2 session failed");
            h->depth--;
            again = 1;
            continue;
        }
        if (h->dead || (h->ep.flags & LP_EPF_CLOSING))
            break;
        h2u_send(h);
        if (!full || !again)
            break;
    }
    if (h->dead || (h->ep.flags & LP_EPF_CLOSING)) {
        if (!(h->ep.flags & LP_EPF_CLOSING)) {
            /* Every stream's request has heard by now (h2u_die marked them). */
            if (!h->nbound || full)
                lp_ep_close(&h->ep);
            else
                lp_ep_timer(&h->ep, TM_KICK, 0);
        }
        return;
    }
    if (h->ready && !h->nlive && !h->nbound &&
        (h->goaway || lp_ep_worker(&h->ep)->stopping ||
         (!nghttp2_session_want_read(h->s) && !nghttp2_session_want_write(h->s)))) {
        h2u_die(h, LP_FAIL_RESET, 502, "connection done");
        return;
    }
    h2u_arm(h);
}

/* The connection cannot go on: every stream's request hears `why` (retried where that is
 * safe), and it closes. */
static void h2u_die(lp_h2u_t *h, int kind, int status, const char *why)
{
    if (h->dead)
        return;
    h->dead = 1;
    lp_list_remove(&h->link);
    lp_list_init(&h->link);
    if (why != h->why)
        snprintf(h->why, sizeof(h->why), "%s", why);
    for (lp_list_t *it = h->streams.next; it != &h->streams;) {
        lp_h2u_stream_t *st = LP_CONTAINER_OF(it, lp_h2u_stream_t, link);
        it = it->next; /* st may move to h->gone */
        if (!st->closed) {
            st->closed = 1;
            h->nlive--;
            h2u_count(h, LP_WM_H2U_STREAMS_CLOSED, 1);
        }
        if (st->peer.req && st->rst_in && !st->in_eof) /* reset before the connection ended */
            stream_fail_later(st, LP_FAIL_RESET, 502, stream_reset_why(st, 0));
        else if (st->peer.req)
            stream_fail_later(st, kind, status, h->why);
        stream_check_gone(st);
    }
    h->depth++;
    h2u_leave(h, 1);
}

/* ---- I/O ---- */

static void h2u_ready(lp_h2u_t *h)
{
    h->handshake = 0;
    if (h->ep.tls) {
        size_t alen = 0;
        const char *alpn = lp_tls_fact(h->ep.tls, LP_TLS_F_ALPN, NULL, 0, &alen);
        if (!alpn || alen != 2 || memcmp(alpn, "h2", 2)) {
            h2u_die(h, LP_FAIL_CONNECT, 502, "the target did not choose h2 by ALPN");
            return;
        }
    }
    h->ready = 1;
    h->ep.flags |= LP_EPF_WRITABLE;
    lp_ep_timer(&h->ep, LP_EP_TM_NONE, 0);
    h->depth++;
    h2u_leave(h, 1);
}

static void h2u_recv(lp_h2u_t *h)
{
    lp_endpoint_t *ep = &h->ep;
    while (!h->dead && !(ep->flags & LP_EPF_CLOSING)) {
        if (ep->rbuf && ep->rpos < ep->rlen) {
            ssize_t rv = nghttp2_session_mem_recv(h->s, (const uint8_t *)ep->rbuf->data + ep->rpos,
                                                  ep->rlen - ep->rpos);
            ep->rpos = ep->rlen;
            lp_ep_release_rbuf(ep); /* DATA is copied: room to decrypt more */
            if (rv < 0) {
                snprintf(h->why, sizeof(h->why), "HTTP/2: %s", nghttp2_strerror((int)rv));
                h2u_die(h, LP_FAIL_PROTOCOL, 502, h->why);
                return;
            }
        }
        if (!ep->tls)
            return;
        int err;
        int rc = lp_ep_tls_fill(ep, &err);
        if (rc < 0) {
            h2u_die(h, LP_FAIL_RESET, 502, "upstream closed the connection (TLS)");
            return;
        }
        if (rc == 0)
            return;
    }
}

static void h2u_on_input(lp_endpoint_t *ep, ssize_t nread)
{
    lp_h2u_t *h = h2u_of(ep);
    if (h->dead)
        return;
    h->depth++;
    if (nread < 0) {
        if (ep->tls && nread == UV_EOF && !h->handshake) {
            lp_tls_in_eof(ep->tls);
            h2u_recv(h);
        }
        h2u_die(h, h->ready ? LP_FAIL_RESET : LP_FAIL_CONNECT, 502,
                nread == UV_EOF ? "upstream closed the connection" : uv_strerror((int)nread));
    } else if (h->handshake) {
        int rc = lp_ep_tls_handshake(ep);
        if (rc == LP_ERROR) {
            snprintf(h->why, sizeof(h->why), "TLS handshake failed: %s", lp_tls_error(ep->tls));
            h2u_die(h, LP_FAIL_CONNECT, 502, h->why);
        } else if (rc == LP_OK) {
            h2u_ready(h);
            h2u_recv(h);
        }
    } else {
        h2u_recv(h);
    }
    h2u_leave(h, 1);
}

static void h2u_on_written(lp_endpoint_t *ep, int status)
{
    lp_h2u_t *h = h2u_of(ep);
    if (h->dead)
        return;
    h->depth++;
    if (status < 0)
        h2u_die(h, LP_FAIL_RESET, 502, uv_strerror(status));
    h2u_leave(h, 1);
}

static void h2u_on_timeout(lp_endpoint_t *ep, int mode)
{
    lp_h2u_t *h = h2u_of(ep);
    if (h->dead && mode != TM_KICK)
        return; /* a dead one's kick: its streams' requests hear of it, then it closes */
    h->depth++;
    if (mode == TM_CONNECT) {
        h2u_die(h, LP_FAIL_TIMEOUT, 504,
                h->handshake ? "TLS handshake timed out" : "connect timed out");
    } else if (mode == LP_EP_TM_BROKEN) {
        h2u_die(h, LP_FAIL_RESET, 502, "write failed");
    } else if (mode == TM_IDLE) {
        if (!h->nlive)
            h2u_die(h, LP_FAIL_RESET, 502, "idle");
    } else if (mode == TM_STREAMS) {
        uint64_t now = now_ms(h);
        for (lp_list_t *it = h->streams.next; it != &h->streams; it = it->next) {
            lp_h2u_stream_t *st = LP_CONTAINER_OF(it, lp_h2u_stream_t, link);
            const char *why;
            int nr;
            if (!st->peer.req)
                continue;
            uint64_t d = stream_deadline(st, &why, &nr);
            if (d && d <= now) {
                stream_fail_later(st, LP_FAIL_TIMEOUT, 504, why);
                st->no_retry |= (uint8_t)nr;
            }
        }
    }
    h2u_leave(h, 1);
}

static void h2u_on_closed(lp_endpoint_t *ep)
{
    lp_h2u_t *h = h2u_of(ep);
    lp_list_remove(&h->link);
    nghttp2_session_del(h->s);
    h2u_count(h, LP_WM_H2U_STREAMS_CLOSED, h->nlive); /* nghttp2 closes no stream when it ends */
    h2u_count(h, LP_WM_H2U_CONNS_CLOSED, 1);
    while (h->streams.next != &h->streams) {
        lp_h2u_stream_t *st = LP_CONTAINER_OF(h->streams.next, lp_h2u_stream_t, link);
        if (st->peer.req && st->peer.req->try.peer == &st->peer)
            st->peer.req->try.peer = NULL; /* cannot be (h2u_die failed them): no dangling link */
        stream_free(st);
    }
    while (h->gone.next != &h->gone)
        stream_free(LP_CONTAINER_OF(h->gone.next, lp_h2u_stream_t, link));
    free(h);
}

static const lp_endpoint_ops_t h2u_ops = {
    .input = h2u_on_input,
    .written = h2u_on_written,
    .timeout = h2u_on_timeout,
    .closed = h2u_on_closed,
};

static void on_connect(uv_connect_t *cr, int status)
{
    lp_h2u_t *h = cr->data;
    if ((h->ep.flags & LP_EPF_CLOSING) || h->dead)
        return;
    if (status < 0) {
        snprintf(h->why, sizeof(h->why), "connect failed: %s", uv_strerror(status));
        h->depth++;
        h2u_die(h, LP_FAIL_CONNECT, 502, h->why);
        h2u_leave(h, 1);
        return;
    }
    uv_tcp_nodelay(&h->ep.tcp, 1);
    lp_ep_reading(&h->ep, 1);
    if (h->pool->tls) {
        /* The connect timer keeps running through the handshake. */
        int rc = lp_ep_tls_connect(&h->ep, h->pool->tls, h->pool->sni, &h->pool->session);
        h->depth++;
        if (rc == LP_ENOMEM) {
            h2u_die(h, LP_FAIL_CONNECT, 502, "cannot start TLS");
        } else if (rc == LP_ERROR) {
            snprintf(h->why, sizeof(h->why), "TLS handshake failed: %s", lp_tls_error(h->ep.tls));
            h2u_die(h, LP_FAIL_CONNECT, 502, h->why);
        } else {
            h->handshake = 1;
        }
        h2u_leave(h, 1);
        return;
    }
    h2u_ready(h);
}

static int h2u_connect(lp_h2u_t *h)
{
    h->connect_req.data = h;
    int rc = uv_tcp_connect(&h->connect_req, &h->ep.tcp,
                            (const struct sockaddr *)&h->pool->addr.addr, on_connect);
    if (rc) {
        snprintf(h->why, sizeof(h->why), "connect failed: %s", uv_strerror(rc));
        return -1;
    }
    lp_ep_timer(&h->ep, TM_CONNECT, T(h)->connect);
    return 0;
}

/* ---- the pipeline's side (h2_up.h) ---- */

int lp_h2u_start(lp_req_t *req, lp_pool_t *t)
{
    if (req->flags & LP_RF_UPGRADE_REQ) {
        lp_upstream_try_end(req, 0);
        return lp_conn_upstream_failed(req, 502, "an upgrade cannot go to an HTTP/2 upstream");
    }
    lp_h2u_t *h = NULL;
    for (lp_list_t *it = t->h2conns.next; it != &t->h2conns && !h; it = it->next) {
        lp_h2u_t *c = LP_CONTAINER_OF(it, lp_h2u_t, link);
        if (h2u_has_room(c))
            h = c;
    }
    int fresh = 0;
    if (!h) {
        if (!(h = h2u_new(req->w, req, t))) {
            lp_upstream_try_end(req, 0);
            return lp_conn_upstream_failed(req, 502, "out of memory");
        }
        fresh = 1;
    }
    lp_h2u_stream_t *st = stream_new(h, req, NULL);
    if (!st) {
        if (fresh) {
            h->dead = 1;
            lp_list_remove(&h->link);
            lp_list_init(&h->link);
            lp_ep_close(&h->ep);
        }
        lp_upstream_try_end(req, 0);
        return lp_conn_upstream_failed(req, 502, "cannot start an HTTP/2 stream");
    }
    if (fresh && h2u_connect(h)) {
        /* Failed at once: the target is down (the stream hears it from h2u_die). */
        h->depth++;
        h2u_die(h, LP_FAIL_CONNECT, 502, h->why);
        lp_req_hold(req);
        h2u_leave(h, 1);
        return lp_req_let_go(req);
    }
    lp_req_hold(req);
    if (lp_conn_upstream_ready(req) != LP_GONE && req->try.peer == &st->peer) {
        h->depth++;
        h2u_leave(h, 0);
    }
    return lp_req_let_go(req);
}

static void h2u_kick(lp_h2u_stream_t *st, int deferred)
{
    lp_h2u_t *h = st->h2;
    if (h->dead || (h->ep.flags & LP_EPF_CLOSING))
        return;
    if (deferred && !st->closed && st->id > 0)
        lp_h2_bodyq_wake(&st->out, h->s, st->id);
    h->depth++;
    h2u_leave(h, 0);
}

void lp_h2u_body(lp_peer_t *p, const char *at, size_t len)
{
    lp_h2u_stream_t *st = st_of(p);
    if (!len || st->closed || st->h2->dead)
        return;
    if (lp_h2_bodyq_add(&st->out, st->h2->ep.env->bufs, at, len)) {
        st->h2->fatal = 1;
        return;
    }
    p->body_out += len;
    if (st->out.bytes >= LP_HIGH_WATERMARK)
        st->was_full = 1;
}

void lp_h2u_body_end(lp_peer_t *p)
{
    lp_h2u_stream_t *st = st_of(p);
    lp_req_t *req = p->req;
    if (st->out.eof)
        return;
    /* (Out of memory for the trailers' copy: the body ends without them.) */
    (void)lp_h2_bodyq_end(&st->out, req ? req->trailers : NULL, req ? req->trailers_len : 0);
}

void lp_h2u_flush(lp_peer_t *p)
{
    h2u_kick(st_of(p), 1);
}

int lp_h2u_full(const lp_peer_t *p)
{
    return st_of(p)->out.bytes >= LP_HIGH_WATERMARK;
}

/* The client drained or a Lua wait ended: the response goes on (as HTTP/1.1's does, in
 * the caller's frame). */
static void stream_go_on(lp_h2u_stream_t *st, unsigned flag)
{
    lp_h2u_t *h = st->h2;
    st->peer.flags &= ~flag;
    if (h->dead)
        return;
    stream_mark(st);
    h->rearm = 1; /* its read timeout counts again, from its last exchange */
    if (h->depth) {
        return; /* our own frame sees to it */
    }
    h->depth++;
    h2u_leave(h, 1);
}

void lp_h2u_resume(lp_peer_t *p)
{
    if (p->flags & LP_PF_PAUSED)
        stream_go_on(st_of(p), LP_PF_PAUSED);
}

void lp_h2u_continue(lp_peer_t *p)
{
    stream_go_on(st_of(p), LP_PF_LUA);
}

void lp_h2u_abort(lp_peer_t *p)
{
    lp_h2u_stream_t *st = st_of(p);
    lp_h2u_t *h = st->h2;
    stream_unbind(st);
    if (h->dead || (h->ep.flags & LP_EPF_CLOSING))
        return;
    h->depth++;
    h2u_leave(h, 0);
}

void lp_h2u_close_idle(lp_pool_t *t)
{
    for (lp_list_t *it = t->h2conns.next; it != &t->h2conns;) {
        lp_h2u_t *h = LP_CONTAINER_OF(it, lp_h2u_t, link);
        it = it->next;
        /* Closed streams may still be delivering to their requests (a slow client, a Lua
         * response phase holding the head): such a connection closes when they are done
         * (h2u_leave, as the worker is stopping). */
        if (!h->nlive && !h->dead && !h->nbound) {
            h->depth++;
            h2u_die(h, LP_FAIL_RESET, 502, "closing idle connections");
            h2u_leave(h, 1);
        }
    }
}
