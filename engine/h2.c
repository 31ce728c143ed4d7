/* HTTP/2 downstream (h2.h): an nghttp2 server session over a client connection's endpoint;
 * each stream's request goes through conn.c's pipeline, its response comes back through
 * lp_h2_down_ops. */
#include <stdlib.h>
#include <string.h>
#include <nghttp2/nghttp2.h>
#include "h2.h"
#include "h2_bodyq.h"
#include "h2_mem.h"
#include "h2_util.h"
#include "log.h"
#include "metrics.h"
#include "lua_vm.h"
#include "relay.h"
#include "req_body.h"
#include "request.h"
#include "tls.h"
#include "upstream.h"
#include "worker.h"

/* The connection timer's modes on an HTTP/2 connection (after the endpoint's own). */
/* H2_TM_KICK: at once, on the next loop turn: work h2_leave(full) has to do that a call
 * from the pipeline must not see under it (resuming an upstream, cutting a request). */
/* H2_TM_STALL: the earliest stream holding response bytes reaches timeouts.send without
 * any of them going (h2_stall_check; armed lazily, it re-checks when it runs). */
enum { H2_TM_IDLE = LP_EP_TM_OWNER, H2_TM_SEND, H2_TM_KICK, H2_TM_STALL };

/* Flood counters count over windows of this many ms. */
#define H2_WINDOW_MS 10000

typedef struct lp_h2_stream_s {
    struct lp_h2_s *h2; /* borrowed: its session */
    lp_list_t link;     /* in h2->streams */
    int32_t id;
    lp_req_t *req; /* reference (the carrying side's, request.h) while the request runs */
    /* The request head while its fields arrive (fields: the pseudo-headers' values first,
     * at the offsets below, then the other fields as HTTP/1.1 text from reg_start on, in
     * fields_cap bytes allocated; cookie: crumbs joined). */
    char *fields, *cookie; /* owned, NULL once the head is handed over */
    size_t fields_len, fields_cap, cookie_len;
    uint32_t m_off, m_len, p_off, p_len, a_off, a_len; /* :method, :path, :authority */
    uint32_t reg_start;                                /* where the regular fields begin */
    uint8_t pseudo;                                    /* H2_PS_*: the pseudo-headers that came */
    size_t hdr_bytes; /* decoded size of the field section coming (head, then trailers) */
    /* Request body read from the client and not yet taken by the upstream (its window is
     * not given back until then: flow control bounds it). */
    lp_h2_bodyq_t in; /* owned */
    /* The response body waiting for DATA frames, its end and its trailers (a copy of the
     * response's, taken when it ended: the request keeps its own for req:resp_trailers()). */
    lp_h2_bodyq_t out;   /* owned */
    uint8_t in_eof;      /* the client's END_STREAM came */
    uint8_t eof_done;    /* ... and was handed to the request */
    uint8_t was_full;    /* out.bytes passed the high watermark: resume the upstream below low */
    uint8_t closed;      /* nghttp2 closed the stream (on_stream_close) */
    uint8_t reset;       /* we reset it */
    uint8_t no_body;     /* the response has no body (HEAD, 204, 304) */
    uint8_t has_cl;      /* the request head has a content-length field (its framing) */
    uint8_t too_large;   /* the field section coming passed max_header_list_size: 431 */
    uint32_t close_code; /* the code it closed with */
    /* ms: its response bytes last went out, or the first of those it holds came (the
     * send-stall timeout runs from it while out.bytes > 0). */
    uint64_t sent_at;
} lp_h2_stream_t;

typedef struct lp_h2_s {
    lp_conn_t *c;          /* borrowed: the connection that owns this */
    nghttp2_session *s;    /* owned */
    lp_list_t streams;     /* lp_h2_stream_t.link: every stream not freed yet */
    unsigned nopen;        /* streams not closed by nghttp2 */
    uint32_t max_streams;  /* the stream limit told at start, kept over reloads (h2_advertise) */
    unsigned nheld;        /* streams holding response bytes (out.bytes > 0): h2_stall_arm */
    unsigned depth;        /* h2.c frames on the stack: streams are freed, and bytes sent, at 0 */
    uint32_t nrequests;    /* streams started (http2.max_requests) */
    uint64_t win_start;    /* ms: the flood counters' window */
    unsigned resets, ctrl; /* RST_STREAM and control frames in the window */
    uint8_t want_send;     /* the session has output queued while depth > 0 */
    uint8_t goaway;        /* GOAWAY sent: close when no stream is left */
    uint8_t bye;           /* a fatal error: send what is queued, then close */
    uint8_t more;          /* h2_send stopped with output left and no write in flight */
    /* Idle memory (h2_idle_arm): the idle timer first runs H2_IDLE_TRIM_MS, gives the
     * session's frame buffer back (h2_mem.h), then runs out the rest of idle_timeout. */
    uint8_t trimmed;     /* done for this idle spell */
    uint8_t turn_queued; /* in the worker's h2_out until the end of the loop turn */
    uint8_t advertised;  /* our SETTINGS went out (h2_advertise) */
    uint64_t idle_at;    /* ms: the connection had no open stream from then */
    lp_h2_mem_t mem;     /* nghttp2's memory hooks (nghttp2 keeps a pointer to it) */
    lp_list_t out_link;  /* in w->h2_out while turn_queued */
} lp_h2_t;

/* An idle connection gives back its session's frame buffer after this many ms without an
 * open stream (not at once: a client between two requests would pay it each time). */
#define H2_IDLE_TRIM_MS 1000

static const lp_h2_conf_t *CONF(const lp_h2_t *h2)
{
    return &lp_ep_worker(&h2->c->ep)->config->h2;
}

/* One more in this worker's HTTP/2 counter `cell` (LP_WM_H2_*, h2_stats.c reports them). */
static void h2_count(const lp_h2_t *h2, int cell)
{
    LP_M_ADD(&lp_ep_worker(&h2->c->ep)->m_cells[cell], 1);
}

static int h2_closing(const lp_h2_t *h2)
{
    return (h2->c->ep.flags & LP_EPF_CLOSING) != 0;
}

int lp_h2_is_preface(const char *p, size_t len)
{
    static const char pre[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    size_t n = len < sizeof(pre) - 1 ? len : sizeof(pre) - 1;
    if (memcmp(p, pre, n))
        return 0;
    return n == sizeof(pre) - 1 ? 1 : -1;
}

/* ---- output ---- */

static size_t h2_fill(lp_h2_t *h2);
static uint64_t h2_idle_arm(lp_h2_t *h2);

/* What the session has to send goes to the endpoint while it holds less than the high
 * watermark (the rest waits in the streams, bounded by their own watermark). */
static void h2_send(lp_h2_t *h2)
{
    lp_conn_t *c = h2->c;
    if (h2->depth || h2_closing(h2)) {
        h2->want_send = 1;
        return;
    }
    h2->want_send = 0;
    h2->depth++; /* mem_send's callbacks must not free streams or send */
    /* A socket that takes everything at once completes without `written`: go on while it
     * does, so that the session's output never waits for a callback that will not come. */
    h2->more = 0;
    for (int round = 0; !h2_closing(h2); round++) {
        if (round == 16) {
            h2->more = 1; /* enough for one turn: the rest on the next (H2_TM_KICK) */
            break;
        }
        /* Whether the session gave bytes, not whether the queue grew: a socket that took
         * the whole batch at once leaves the queue as it was, and no `written` follows. */
        size_t made = h2_fill(h2);
        if (h2_closing(h2))
            break;
        lp_ep_flush(&c->ep);
        if (!made || lp_ep_queued(&c->ep) > LP_LOW_WATERMARK || !nghttp2_session_want_write(h2->s))
            break;
    }
    h2->depth--;
    if (h2_closing(h2))
        return;
    if (c->ep.out_pending > LP_HIGH_WATERMARK && c->ep.tmode != H2_TM_SEND)
        lp_ep_timer(&c->ep, H2_TM_SEND, lp_ep_worker(&c->ep)->config->timeouts.send);
}

/* http2.max_concurrent_streams: nghttp2 holds a client to the value we advertise only until
 * the client acknowledges it; from then on, a stream over it is a connection error (GOAWAY
 * PROTOCOL_ERROR: the streams already accepted are lost with it). RFC 9113 5.1.2 allows
 * refusing only that stream, as nginx does, and nghttp2 has no option for it. So nghttp2 is
 * given twice the limit, the client is told the limit itself (h2_advertise writes it into the
 * SETTINGS frame as it goes out) and on_begin_headers refuses what is over it with
 * REFUSED_STREAM, before the ACK and after. nghttp2's GOAWAY stays for a client with twice
 * the limit opening at once (refused streams count until their RST_STREAM goes), as nginx's
 * "too many streams at once". */
static uint32_t h2_session_streams(const lp_h2_conf_t *cf)
{
    return 2 * cf->max_concurrent_streams; /* at most 65535 each (config_schema.lua) */
}

/* Sets SETTINGS_MAX_CONCURRENT_STREAMS to `limit` in a SETTINGS frame (not an ACK) of n
 * bytes. 0 when it is not one or has no such entry. */
static int settings_patch(uint8_t *f, size_t n, uint32_t limit)
{
    if (n < 9 || f[3] != NGHTTP2_SETTINGS || (f[4] & NGHTTP2_FLAG_ACK) || f[5] | f[6] | f[7] | f[8])
        return 0;
    size_t len = (size_t)f[0] << 16 | (size_t)f[1] << 8 | f[2];
    if (len != n - 9 || len % 6)
        return 0;
    int found = 0;
    for (uint8_t *e = f + 9; e < f + n; e += 6)
        if ((e[0] << 8 | e[1]) == NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS) {
            e[2] = (uint8_t)(limit >> 24);
            e[3] = (uint8_t)(limit >> 16);
            e[4] = (uint8_t)(limit >> 8);
            e[5] = (uint8_t)limit;
            found = 1;
        }
    return found;
}

/* The session's first output: the SETTINGS frame lp_h2_start submitted (a server session
 * sends nothing before it), with the stream limit the client is held to (see
 * h2_session_streams). Returns the bytes queued. */
static size_t h2_advertise(lp_h2_t *h2)
{
    const uint8_t *data;
    ssize_t n = nghttp2_session_mem_send(h2->s, &data);
    h2->advertised = 1;
    if (n <= 0) {
        h2->bye = n < 0;
        return 0;
    }
    uint8_t f[LP_WBATCH_SCRATCH];
    lp_wbatch_t *wb = (size_t)n <= sizeof(f) ? lp_ep_outb(&h2->c->ep, 1, (unsigned)n) : NULL;
    if (!wb) {
        h2->bye = 1;
        return 0;
    }
    memcpy(f, data, (size_t)n);
    if (!settings_patch(f, (size_t)n, h2->max_streams))
        lp_log_error("HTTP/2: the first frame is not our SETTINGS: the client is told a "
                     "stream limit of %u",
                     2 * (unsigned)h2->max_streams);
    lp_wbatch_add_copy(wb, (const char *)f, (size_t)n);
    return (size_t)n;
}

/* One batch of the session's output, up to the high watermark. Returns the bytes queued. */
static size_t h2_fill(lp_h2_t *h2)
{
    size_t made = h2->advertised ? 0 : h2_advertise(h2);
    return made + lp_h2_fill(h2->s, &h2->c->ep, &h2->bye);
}

static void stream_free(lp_h2_stream_t *st)
{
    lp_list_remove(&st->link);
    free(st->fields);
    free(st->cookie);
    if (st->out.bytes)
        st->h2->nheld--;
    lp_h2_bodyq_free(&st->in);
    lp_h2_bodyq_free(&st->out);
    free(st);
}

static void stream_pump(lp_h2_stream_t *st);
static int h2_flood(lp_h2_t *h2, unsigned *count, unsigned max, const char *what, int cell);

/* ---- the send-stall timeout (timeouts.send) ---- */

/* The stream holds response bytes not sent yet: unless they go, the client's window for it
 * (or the connection's) is shut, and the bytes, the upstream paused behind them or a cache
 * entry's reference stay held. */
static int stream_holds(const lp_h2_stream_t *st)
{
    return st->out.bytes && !st->closed && !st->reset;
}

/* Arms H2_TM_STALL for the stream that has held bytes longest, when the connection's timer
 * is free (H2_TM_SEND, the socket's own stall, has the same timeout and wins). Lazy: an
 * armed timer is left as it is, and re-checks when it runs. */
static void h2_stall_arm(lp_h2_t *h2)
{
    lp_endpoint_t *ep = &h2->c->ep;
    if (!h2->nopen || !h2->nheld || ep->tmode != LP_EP_TM_NONE)
        return;
    uint64_t first = UINT64_MAX;
    for (lp_list_t *it = h2->streams.next; it != &h2->streams; it = it->next) {
        const lp_h2_stream_t *st = LP_CONTAINER_OF(it, lp_h2_stream_t, link);
        if (stream_holds(st) && st->sent_at < first)
            first = st->sent_at;
    }
    if (first == UINT64_MAX)
        return;
    uint64_t now = uv_now(ep->env->loop), due = first + lp_ep_worker(ep)->config->timeouts.send;
    lp_ep_timer(ep, H2_TM_STALL, due > now ? due - now : 1);
}

/* H2_TM_STALL ran out: streams that held bytes for timeouts.send without sending any are
 * reset (CANCEL) and their requests cut (the upstream connection or the cache entry is let
 * go); when the connection's window is the one shut, the connection ends (GOAWAY). */
static void h2_stall_check(lp_h2_t *h2)
{
    uint64_t now = uv_now(h2->c->ep.env->loop);
    uint64_t to = lp_ep_worker(&h2->c->ep)->config->timeouts.send;
    int conn_shut = nghttp2_session_get_remote_window_size(h2->s) <= 0;
    char ip[LP_IP_TEXT];
    for (lp_list_t *it = h2->streams.next; it != &h2->streams && !h2_closing(h2) && !h2->bye;
         it = it->next) {
        lp_h2_stream_t *st = LP_CONTAINER_OF(it, lp_h2_stream_t, link);
        if (!stream_holds(st) || now - st->sent_at < to)
            continue;
        lp_conn_ip_text(h2->c, ip);
        if (conn_shut) {
            lp_log_info("%s: HTTP/2: the client kept the connection's window shut for %llu ms: "
                        "GOAWAY",
                        ip, (unsigned long long)to);
            h2_count(h2, LP_WM_H2_STALL_CONN);
            nghttp2_session_terminate_session(h2->s, NGHTTP2_ENHANCE_YOUR_CALM);
            h2->bye = 1;
            return;
        }
        lp_log_info("%s: HTTP/2 stream %d: the client kept its window shut for %llu ms: reset", ip,
                    (int)st->id, (unsigned long long)to);
        h2_count(h2, LP_WM_H2_STALL_STREAM);
        nghttp2_submit_rst_stream(h2->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
        st->reset = 1;
        if (st->req)
            lp_conn_req_cut(st->req); /* clears st->req; the stream stays (depth > 0) */
    }
}

/* Some stream's request waits for h2_leave(full): an upstream to resume, or a request to
 * cut because nghttp2 closed its stream. */
static int h2_owes(lp_h2_t *h2)
{
    for (lp_list_t *it = h2->streams.next; it != &h2->streams; it = it->next) {
        lp_h2_stream_t *st = LP_CONTAINER_OF(it, lp_h2_stream_t, link);
        if (st->req && ((st->was_full && st->out.bytes <= LP_LOW_WATERMARK) ||
                        (st->closed && !((st->req->flags & LP_RF_RESP_DONE) && !st->close_code))))
            return 1;
    }
    return 0;
}

/* Frees the streams that closed and that no request holds any more. */
static void h2_sweep(lp_h2_t *h2)
{
    for (lp_list_t *it = h2->streams.next; it != &h2->streams;) {
        lp_h2_stream_t *st = LP_CONTAINER_OF(it, lp_h2_stream_t, link);
        it = it->next;
        if (st->closed && !st->req)
            stream_free(st);
    }
}

/* The end of an h2.c frame: at the outermost one, streams nghttp2 closed while their
 * request ran are cut (the client reset them, or the connection failed them), upstreams
 * paused by a full stream resume, streams nobody needs go, and the session's output is
 * sent. `full`: h2.c's own entry points (input, written, timers); the pipeline's calls only
 * send, so that they never see a request end under them. */
static void h2_leave(lp_h2_t *h2, int full)
{
    if (--h2->depth)
        return;
    lp_conn_t *c = h2->c;
    for (int pass = 0; pass < 4 && !h2_closing(h2); pass++) {
        int again = 0;
        if (full) {
            h2->depth++;
            lp_list_t *it = h2->streams.next;
            while (it != &h2->streams && !h2_closing(h2)) {
                lp_h2_stream_t *st = LP_CONTAINER_OF(it, lp_h2_stream_t, link);
                it = it->next;
                lp_req_t *req = st->req;
                if (!req)
                    continue;
                if (st->closed && !((req->flags & LP_RF_RESP_DONE) && st->close_code == 0)) {
                    lp_log_debug("HTTP/2 stream %d closed (%u) before its response ended",
                                 (int)st->id, st->close_code);
                    lp_conn_req_cut(req); /* clears st->req */
                    again = 1;
                    continue;
                }
                if (st->was_full && st->out.bytes <= LP_LOW_WATERMARK) {
                    st->was_full = 0;
                    if (req->try.peer && !(req->flags & LP_RF_RESP_DONE)) {
                        lp_req_hold(req);
                        lp_peer_resume(req->try.peer);
                        lp_req_drop(req);
                        again = 1;
                    } else if (req->cache.body) {
                        lp_conn_cache_resume(req); /* a hit's next bytes (memory or file) */
                        again = 1;
                    }
                }
            }
            h2->depth--;
        }
        h2_sweep(h2);
        if (h2_closing(h2))
            return;
        h2_send(h2);
        if (!full || !(again || h2_owes(h2)))
            break;
    }
    if (h2_closing(h2))
        return;
    if (h2_owes(h2) || h2->more) /* a write done at once calls no `written`: come back */
        lp_ep_timer(&c->ep, H2_TM_KICK, 0);
    if (h2->bye || (!nghttp2_session_want_read(h2->s) && !nghttp2_session_want_write(h2->s)) ||
        (h2->goaway && !h2->nopen && !nghttp2_session_want_write(h2->s))) {
        if (!(c->flags & LP_CF_CLOSE_AFTER))
            lp_conn_close_after_write(c);
        return;
    }
    /* Also after the pipeline's own sends (not full): the last stream often closes there, and
     * when its write completes at once no `written` comes to arm the idle timer later. */
    if (!h2->nopen && c->ep.tmode != H2_TM_IDLE && c->ep.tmode != H2_TM_SEND &&
        c->ep.tmode != H2_TM_KICK)
        lp_ep_timer(&c->ep, H2_TM_IDLE, h2_idle_arm(h2));
    else if (h2->nopen && c->ep.tmode == H2_TM_IDLE)
        lp_ep_timer(&c->ep, LP_EP_TM_NONE, 0);
    h2_stall_arm(h2);
}

/* ---- idle memory ---- */

/* Gives an idle session's memory back (h2_mem.h): the frame buffer's pages and the empty
 * stream map at once; the session struct and request HPACK ring (parked) too when no
 * stream is left at all and nothing is queued, so that no request, timer or turn of
 * h2.c's can reach nghttp2 before an entry point wakes it (lp_h2_mem_wake). */
static void h2_park(lp_h2_t *h2)
{
    if (h2->mem.parked || h2->depth || nghttp2_session_want_write(h2->s))
        return;
    lp_h2_mem_trim(&h2->mem, h2->s);
    h2_sweep(h2); /* the last stream often closed in the last send (after h2_leave's) */
    if (h2->streams.next == &h2->streams && !h2->nopen && !h2->turn_queued && !h2->want_send &&
        !h2->bye && !h2->more && lp_h2_mem_park(&h2->mem))
        lp_log_debug("HTTP/2 idle session parked");
}

/* The connection has just become idle: the idle timer's first run, H2_IDLE_TRIM_MS (or
 * idle_timeout when shorter), trims memory (h2_idle_trim). */
static uint64_t h2_idle_arm(lp_h2_t *h2)
{
    uint64_t to = CONF(h2)->idle_timeout;
    h2->idle_at = uv_now(h2->c->ep.env->loop);
    h2->trimmed = 0;
    return to > H2_IDLE_TRIM_MS ? H2_IDLE_TRIM_MS : to;
}

/* The idle timer ran before idle_timeout: the frame buffer goes back to the kernel when
 * the session has nothing to send, and the timer runs out the rest. 0 when it is
 * idle_timeout's turn. */
static int h2_idle_trim(lp_h2_t *h2)
{
    uint64_t to = CONF(h2)->idle_timeout, idle = uv_now(h2->c->ep.env->loop) - h2->idle_at;
    if (h2->trimmed || idle >= to)
        return 0;
    h2_park(h2);
    h2->trimmed = 1;
    lp_ep_timer(&h2->c->ep, H2_TM_IDLE, to - idle);
    return 1;
}

/* ---- the request head ---- */

static int append(char **buf, size_t *len, const char *a, size_t alen, const char *b, size_t blen,
                  const char *sep)
{
    size_t slen = strlen(sep);
    char *n = realloc(*buf, *len + alen + blen + slen + 3);
    if (!n)
        return -1;
    memcpy(n + *len, a, alen);
    memcpy(n + *len + alen, sep, slen);
    memcpy(n + *len + alen + slen, b, blen);
    *len += alen + slen + blen;
    n[*len] = 0;
    *buf = n;
    return 0;
}

/* lp_h2_stream_t.pseudo: the pseudo-headers that came (the first of each is kept), and a
 * regular field came (pseudo-headers after it make the head malformed: RFC 9113 8.3). */
enum { H2_PS_METHOD = 1, H2_PS_PATH = 2, H2_PS_AUTHORITY = 4, H2_PS_REGULAR = 8 };

/* Room for n more bytes of the stream's head; NULL when out of memory. The buffer doubles:
 * a realloc per field cost more than the field. */
static char *fields_room(lp_h2_stream_t *st, size_t n)
{
    size_t need = st->fields_len + n;
    if (need > st->fields_cap) {
        size_t cap = st->fields_cap ? st->fields_cap * 2 : 512;
        while (cap < need)
            cap *= 2;
        char *b = realloc(st->fields, cap);
        if (!b)
            return NULL;
        st->fields = b;
        st->fields_cap = cap;
    }
    char *o = st->fields + st->fields_len;
    st->fields_len = need;
    return o;
}

static int on_begin_headers(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    lp_h2_t *h2 = ud;
    if (f->hd.type != NGHTTP2_HEADERS || f->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (h2_closing(h2))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    if (h2->nopen >= h2->max_streams) {
        /* Over the limit the client was told: this stream only (h2_session_streams). Its
         * fields and data are ignored (no stream of ours). A refusal costs us the block's
         * HPACK decoding and the client nothing: counted as a reset (http2.max_resets), as
         * a stream opened and reset at once is. */
        lp_log_debug("HTTP/2 stream %d: over http2.max_concurrent_streams: refused",
                     (int)f->hd.stream_id);
        if (h2_flood(h2, &h2->resets, CONF(h2)->max_resets, "refused stream", LP_WM_H2_FLOOD_RESET))
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        return nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, f->hd.stream_id,
                                         NGHTTP2_REFUSED_STREAM)
                   ? NGHTTP2_ERR_CALLBACK_FAILURE
                   : 0;
    }
    lp_h2_stream_t *st = calloc(1, sizeof(*st));
    if (!st)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    st->h2 = h2;
    st->id = f->hd.stream_id;
    lp_list_insert_tail(&h2->streams, &st->link);
    h2->nopen++;
    h2_count(h2, LP_WM_H2_STREAMS);
    nghttp2_session_set_stream_user_data(s, st->id, st);
    if (++h2->nrequests == CONF(h2)->max_requests && !h2->goaway) {
        /* http2.max_requests: this stream is the last; those open finish. */
        nghttp2_submit_goaway(s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR, NULL, 0);
        h2->goaway = 1;
    }
    return 0;
}

/* Counts a field of nv bytes (name and value) in the stream's header list; 1 when the list
 * passes http2.max_header_list_size (the advertised SETTINGS_MAX_HEADER_LIST_SIZE; HPACK
 * bombs: a small block decoding to a large list). The rest of the block is then decoded (the
 * HPACK state needs it) but not kept, and the stream answered 431 at its end when it can
 * still take a response (RFC 9113 10.5.1, as HTTP/1.1 does), rather than reset. */
static int h2_over_list_size(lp_h2_t *h2, lp_h2_stream_t *st, size_t nv)
{
    st->hdr_bytes += nv + 32;
    if (st->hdr_bytes <= CONF(h2)->max_header_list_size)
        return 0;
    lp_log_info("HTTP/2 stream %d: %s over http2.max_header_list_size: 431", (int)st->id,
                st->req ? "trailer list" : "header list");
    h2_count(h2, LP_WM_H2_FLOOD_HEADERS);
    st->too_large = 1;
    return 1;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *f, const uint8_t *name, size_t nlen,
                     const uint8_t *value, size_t vlen, uint8_t flags, void *ud)
{
    lp_h2_t *h2 = ud;
    lp_h2_stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    if (st && st->req && f->hd.type == NGHTTP2_HEADERS && f->headers.cat == NGHTTP2_HCAT_HEADERS) {
        /* The request's trailers: passed on after its body (upstream.c, h2_up.c). */
        if (nlen && name[0] == ':')
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* malformed: RST_STREAM */
        if (st->too_large || h2_over_list_size(h2, st, nlen + vlen))
            return 0;
        if (lp_h2_trailer_forbidden((const char *)name, nlen))
            return 0;
        return lp_h2_text_add(&st->req->trailers, &st->req->trailers_len, (const char *)name, nlen,
                              (const char *)value, vlen)
                   ? NGHTTP2_ERR_CALLBACK_FAILURE
                   : 0;
    }
    if (!st || st->req || f->hd.type != NGHTTP2_HEADERS || st->too_large)
        return 0;
    if (h2_over_list_size(h2, st, nlen + vlen)) {
        /* The 431 needs the request line only: the fields kept so far go. */
        if (st->pseudo & H2_PS_REGULAR)
            st->fields_len = st->reg_start;
        free(st->cookie);
        st->cookie = NULL;
        st->cookie_len = 0;
        st->has_cl = 0;
        return 0;
    }
    const char *n = (const char *)name, *v = (const char *)value;
    if (nlen && n[0] == ':') {
        if (st->pseudo & H2_PS_REGULAR)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* malformed: RST_STREAM */
        uint8_t which = nlen == 7 && !memcmp(n, ":method", 7)        ? H2_PS_METHOD
                        : nlen == 5 && !memcmp(n, ":path", 5)        ? H2_PS_PATH
                        : nlen == 10 && !memcmp(n, ":authority", 10) ? H2_PS_AUTHORITY
                                                                     : 0;
        if (!which || (st->pseudo & which))
            return 0; /* :scheme: the connection says it (X-Forwarded-Proto) */
        uint32_t off = (uint32_t)st->fields_len;
        char *o = fields_room(st, vlen);
        if (!o)
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        memcpy(o, v, vlen);
        st->pseudo |= which;
        if (which == H2_PS_METHOD) {
            st->m_off = off;
            st->m_len = (uint32_t)vlen;
        } else if (which == H2_PS_PATH) {
            st->p_off = off;
            st->p_len = (uint32_t)vlen;
        } else {
            st->a_off = off;
            st->a_len = (uint32_t)vlen;
        }
        return 0;
    }
    if (!(st->pseudo & H2_PS_REGULAR)) {
        st->pseudo |= H2_PS_REGULAR;
        st->reg_start = (uint32_t)st->fields_len;
    }
    if (nlen == 6 && !memcmp(n, "cookie", 6)) /* RFC 9113 8.2.3: crumbs join with "; " */
        return append(&st->cookie, &st->cookie_len, "", 0, v, vlen, st->cookie ? "; " : "")
                   ? NGHTTP2_ERR_CALLBACK_FAILURE
                   : 0;
    if (nlen == 14 && !memcmp(n, "content-length", 14))
        st->has_cl = 1; /* a field's name, not any text in the head (x-content-length) */
    if (nlen == 4 && !memcmp(n, "host", 4) && (st->pseudo & H2_PS_AUTHORITY))
        return 0; /* :authority wins (RFC 9113 8.3.1) */
    char *o = fields_room(st, nlen + vlen + 4);
    if (!o)
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    memcpy(o, n, nlen);
    memcpy(o + nlen, ": ", 2);
    memcpy(o + nlen + 2, v, vlen);
    memcpy(o + nlen + 2 + vlen, "\r\n", 2);
    return 0;
}

/* The head is whole: as an HTTP/1.1 head it goes through the request parser (the same
 * checks and the same view for every module), then into the pipeline. */
static void stream_start(lp_h2_t *h2, lp_h2_stream_t *st, int end_stream)
{
    lp_conn_t *c = h2->c;
    const char *m = st->pseudo & H2_PS_METHOD ? st->fields + st->m_off : "GET";
    const char *p = st->pseudo & H2_PS_PATH ? st->fields + st->p_off : "/";
    size_t mlen = st->pseudo & H2_PS_METHOD ? st->m_len : 3;
    size_t plen = st->pseudo & H2_PS_PATH ? st->p_len : 1;
    int has_a = (st->pseudo & H2_PS_AUTHORITY) != 0;
    size_t alen = has_a ? st->a_len : 0;
    size_t reg = st->pseudo & H2_PS_REGULAR ? st->reg_start : st->fields_len;
    size_t rlen = st->fields_len - reg;
    /* A body of unknown length goes upstream chunked. */
    int chunked = !end_stream && !st->has_cl;
    size_t len = mlen + 1 + plen + 11 + (has_a ? 6 + alen + 2 : 0) + rlen +
                 (st->cookie ? 8 + st->cookie_len + 2 : 0) + (chunked ? 28 : 0) + 2;
    /* The parser copies what it keeps into the request's arena: the text is only read. */
    char stack[4096];
    char *text = len <= sizeof(stack) ? stack : malloc(len);
    if (text) {
        char *o = text;
#define PUT(s, n) (memcpy(o, (s), (n)), o += (n))
        PUT(m, mlen);
        PUT(" ", 1);
        PUT(p, plen);
        PUT(" HTTP/1.1\r\n", 11);
        if (has_a) {
            PUT("Host: ", 6);
            PUT(st->fields + st->a_off, alen);
            PUT("\r\n", 2);
        }
        if (rlen)
            PUT(st->fields + reg, rlen);
        if (st->cookie) {
            PUT("Cookie: ", 8);
            PUT(st->cookie, st->cookie_len);
            PUT("\r\n", 2);
        }
        if (chunked)
            PUT("Transfer-Encoding: chunked\r\n", 28);
        PUT("\r\n", 2);
#undef PUT
    }
    free(st->fields);
    free(st->cookie);
    st->fields = st->cookie = NULL;
    st->fields_len = st->fields_cap = 0;
    lp_req_t *req = text ? lp_req_new(lp_ep_worker(&c->ep), c) : NULL;
    if (!req) {
        if (text != stack)
            free(text);
        nghttp2_submit_rst_stream(h2->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        st->reset = 1;
        return;
    }
    st->req = req; /* lp_req_new's reference */
    req->h2s = st;
    req->flags |= LP_RF_H2;
    if (end_stream) {
        st->in_eof = st->eof_done = 1;
        req->state = LP_RS_DONE;
    }
    /* Host (from :authority) and Transfer-Encoding are lines we made, not the client's
     * fields: they take slots beyond its limit (LP_HEADERS_SPARE), not its own. */
    unsigned ours = (has_a ? 1u : 0u) + (chunked ? 1u : 0u);
    if (req->h1.max_headers + ours <= req->cap_headers)
        req->h1.max_headers += ours;
    size_t used = 0;
    lp_h1_event_t ev = lp_h1_execute(&req->h1, text, len, &used);
    if (text != stack)
        free(text);
    int status = st->too_large ? 431 : 0; /* its request line parsed: the log shows it */
    st->too_large = 0; /* the trailers, a field section of their own, count from 0 */
    st->hdr_bytes = 0;
    if ((ev == LP_H1_HEAD || ev == LP_H1_DONE) && !status) {
        lp_h1_resume(&req->h1);
        lp_conn_req_head(req);
        return;
    }
    if (!status) {
        lp_log_info("HTTP/2 stream %d: bad request: %d %s", (int)st->id, req->h1.err_status,
                    req->h1.err_reason ? req->h1.err_reason : "");
        status = req->h1.err_status ? req->h1.err_status : 400;
    }
    lp_req_hold(req);
    (void)lp_conn_upstream_failed(
        req, status, status == 431 ? "request header fields too large" : "bad request");
    lp_req_drop(req);
}

/* The request's trailers passed max_header_list_size (h2_over_list_size), found when the
 * body's end is delivered (stream_pump): 431 while its response has not started, else the
 * stream is reset (the response cannot say it). (A response that ended already, a 431 for
 * the head say, stays: stream_pump delivers nothing to an ended request.) */
static void stream_trailers_too_large(lp_h2_stream_t *st)
{
    lp_req_t *req = st->req;
    lp_req_hold(req);
    if (!(req->flags & LP_RF_RESP_STARTED))
        (void)lp_conn_upstream_failed(req, 431, "request trailer fields too large");
    else
        lp_h2_down_ops.abort(req);
    lp_req_drop(req);
}

/* ---- the request body ---- */

static void stream_pump(lp_h2_stream_t *st)
{
    lp_h2_t *h2 = st->h2;
    lp_req_t *req = st->req;
    if (!req || h2_closing(h2))
        return;
    /* As on HTTP/1.1, the body waits while the head does (an upstream still connecting,
     * Lua deciding): bytes or the chunked end given to a peer that has not sent the head
     * yet went before it, and the head then ended the body once more. */
    if ((req->flags & (LP_RF_WAIT_UPSTREAM | LP_RF_READ_PAUSED)) &&
        !(req->flags & LP_RF_BODY_BUFFERING))
        return;
    lp_req_hold(req);
    int gave = 0;
    while (st->in.head && !lp_req_ended(req) &&
           (req->try.peer || (req->flags & LP_RF_BODY_BUFFERING) || lp_req_body_replaced(req)) &&
           !(req->try.peer && lp_peer_full(req->try.peer))) {
        size_t n;
        lp_buf_t *b;
        const char *at = lp_h2_bodyq_shift(&st->in, &n, &b);
        int rc = lp_conn_req_body(req, at, n, b);
        lp_buf_unref(b);
        nghttp2_session_consume_stream(h2->s, st->id, n);
        h2->want_send = 1;
        if (rc == 413) {
            if (req->flags & LP_RF_RESP_STARTED)
                lp_h2_down_ops.abort(req);
            else
                (void)lp_conn_upstream_failed(req, 413, "request body too large");
        } else if (rc == LP_H1_CB_PAUSE || (rc == 0 && (req->flags & LP_RF_BODY_WAKE))) {
            req->flags &= ~(LP_RF_BODY_BUFFERING | LP_RF_BODY_WAKE);
            lp_lua_wake(req);
        } else if (rc) {
            (void)lp_conn_upstream_failed(req, 500, "out of memory");
        } else {
            gave = 1;
            continue;
        }
        gave = 0;
        break;
    }
    /* Stopped by a full peer: paused, as an HTTP/1.1 client is, so that the peer's drain
     * (lp_conn_resume_body) pumps again. Without the flag the resume did nothing, and the
     * rest waited for the client's next frame: after the last one, forever. Before the
     * flush, which may drain the peer. */
    if (st->in.head && !lp_req_ended(req) && req->try.peer && lp_peer_full(req->try.peer))
        req->flags |= LP_RF_READ_PAUSED;
    if (gave && !lp_req_ended(req) && req->try.peer)
        lp_peer_flush(req->try.peer);
    if (!lp_req_ended(req) && !st->in.head && st->in_eof && !st->eof_done) {
        st->eof_done = 1;
        if (st->too_large)
            stream_trailers_too_large(st);
        else
            (void)lp_conn_req_body_end(req);
    }
    lp_req_drop(req);
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *ud)
{
    lp_h2_t *h2 = ud;
    lp_h2_stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    nghttp2_session_consume_connection(s, len); /* each stream's window bounds the rest */
    if (!st || !st->req || (st->req->flags & LP_RF_RESP_DONE)) {
        nghttp2_session_consume_stream(s, id, len); /* nobody reads it: dropped */
        return 0;
    }
    if (lp_h2_bodyq_add(&st->in, h2->c->ep.env->bufs, (const char *)data, len))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    return 0;
}

/* ---- frames ---- */

static int h2_flood(lp_h2_t *h2, unsigned *count, unsigned max, const char *what, int cell)
{
    uint64_t now = uv_now(h2->c->ep.env->loop);
    if (now - h2->win_start >= H2_WINDOW_MS) {
        h2->win_start = now;
        h2->resets = h2->ctrl = 0;
    }
    if (++*count <= max)
        return 0;
    char ip[LP_IP_TEXT];
    lp_conn_ip_text(h2->c, ip);
    lp_log_warn("%s: HTTP/2 %s flood (over %u in %d s): GOAWAY", ip, what, max,
                H2_WINDOW_MS / 1000);
    h2_count(h2, cell);
    nghttp2_session_terminate_session(h2->s, NGHTTP2_ENHANCE_YOUR_CALM);
    h2->bye = 1;
    return NGHTTP2_ERR_CALLBACK_FAILURE;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    lp_h2_t *h2 = ud;
    if (h2_closing(h2))
        return NGHTTP2_ERR_CALLBACK_FAILURE;
    const lp_h2_conf_t *cf = CONF(h2);
    lp_h2_stream_t *st = nghttp2_session_get_stream_user_data(s, f->hd.stream_id);
    switch (f->hd.type) {
    case NGHTTP2_RST_STREAM:
        h2_count(h2, LP_WM_H2_RST_RECV);
        return h2_flood(h2, &h2->resets, cf->max_resets, "RST_STREAM", LP_WM_H2_FLOOD_RESET);
    case NGHTTP2_SETTINGS:
    case NGHTTP2_PING:
        if (f->hd.flags & NGHTTP2_FLAG_ACK)
            return 0;
        return h2_flood(h2, &h2->ctrl, cf->max_control_frames, "control frame",
                        LP_WM_H2_FLOOD_CONTROL);
    case NGHTTP2_PRIORITY:
        return h2_flood(h2, &h2->ctrl, cf->max_control_frames, "control frame",
                        LP_WM_H2_FLOOD_CONTROL);
    case NGHTTP2_HEADERS:
        if (st && f->headers.cat == NGHTTP2_HCAT_REQUEST) {
            stream_start(h2, st, (f->hd.flags & NGHTTP2_FLAG_END_STREAM) != 0);
            return 0;
        }
        /* trailers: their END_STREAM below; ones over the limit (st->too_large) are
         * answered where the body's end is delivered (stream_pump), as HTTP/1.1's errors
         * are: here the request may still be parked in Lua or waiting for a cache lock */
        break;
    case NGHTTP2_DATA:
        if (f->hd.length == 0 && !(f->hd.flags & NGHTTP2_FLAG_END_STREAM) &&
            h2_flood(h2, &h2->ctrl, cf->max_control_frames, "empty DATA frame",
                     LP_WM_H2_FLOOD_CONTROL))
            return NGHTTP2_ERR_CALLBACK_FAILURE;
        break;
    default:
        return 0;
    }
    if (st && (f->hd.flags & NGHTTP2_FLAG_END_STREAM))
        st->in_eof = 1;
    if (st && st->req)
        stream_pump(st);
    return 0;
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t code, void *ud)
{
    lp_h2_t *h2 = ud;
    lp_h2_stream_t *st = nghttp2_session_get_stream_user_data(s, id);
    if (!st || st->closed)
        return 0;
    st->closed = 1;
    st->close_code = code;
    h2->nopen--;
    h2_count(h2, LP_WM_H2_STREAMS_CLOSED);
    return 0; /* its request, if any, is seen to by h2_leave */
}

static ssize_t stream_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                           uint32_t *flags, nghttp2_data_source *src, void *ud)
{
    lp_h2_stream_t *st = src->ptr;
    ssize_t n = lp_h2_bodyq_source(&st->out, s, id, buf, length, flags);
    if (n > 0) /* the send-stall clock starts again */
        st->sent_at = uv_now(st->h2->c->ep.env->loop);
    if (n > 0 && !st->out.bytes)
        st->h2->nheld--;
    return n;
}

/* Frames that went out: RST_STREAM and GOAWAY are counted (nghttp2's own refusals too). */
static int on_frame_send(nghttp2_session *s, const nghttp2_frame *f, void *ud)
{
    (void)s;
    if (f->hd.type == NGHTTP2_RST_STREAM)
        h2_count(ud, LP_WM_H2_RST_SENT);
    else if (f->hd.type == NGHTTP2_GOAWAY)
        h2_count(ud, LP_WM_H2_GOAWAY_SENT);
    return 0;
}

/* ---- the session ---- */

int lp_h2_start(lp_conn_t *c)
{
    const lp_h2_conf_t *cf = &lp_ep_worker(&c->ep)->config->h2;
    lp_h2_t *h2 = calloc(1, sizeof(*h2));
    if (!h2)
        return -1;
    h2->c = c;
    lp_list_init(&h2->streams);
    nghttp2_session_callbacks *cb;
    nghttp2_option *opt;
    if (nghttp2_session_callbacks_new(&cb)) {
        free(h2);
        return -1;
    }
    if (nghttp2_option_new(&opt)) {
        nghttp2_session_callbacks_del(cb);
        free(h2);
        return -1;
    }
    nghttp2_session_callbacks_set_on_begin_headers_callback(cb, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cb, on_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cb, on_frame_recv);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cb, on_data_chunk);
    nghttp2_session_callbacks_set_on_stream_close_callback(cb, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_send_callback(cb, on_frame_send);
    nghttp2_option_set_no_auto_window_update(opt, 1);
    /* Responses are encoded without a dynamic table (as nginx does): static-table indexes
     * and literals. An idle connection then holds no entries, and a deflater ring that is
     * never written (h2_mem.h: deflate_page); the table saved few bytes on the wire, most
     * response values (date, length, ids) changing from one response to the next.
     * hpack_table_size is the table clients may use for requests. */
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 0);
    nghttp2_option_set_max_continuations(opt, cf->max_continuations);
    nghttp2_option_set_max_outbound_ack(opt, 1000);
    nghttp2_option_set_no_closed_streams(opt, 1);
    lp_worker_t *w = lp_ep_worker(&c->ep);
    if (!w->h2_pool)
        w->h2_pool = lp_h2_pool_new(); /* NULL: malloc */
    lp_h2_mem_init(&h2->mem, w->h2_pool);
    h2->mem.deflate_page = 1;
    h2->mem.hot_page = 1;
    h2->mem.capturing = 1;
    int rv = nghttp2_session_server_new3(&h2->s, cb, h2, opt, &h2->mem.mem);
    h2->mem.capturing = 0;
    nghttp2_session_callbacks_del(cb);
    nghttp2_option_del(opt);
    if (rv) {
        free(h2);
        return -1;
    }
    h2->max_streams = cf->max_concurrent_streams;
    nghttp2_settings_entry iv[] = {
        /* The client is told h2->max_streams (h2_advertise). */
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, h2_session_streams(cf)},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, cf->initial_window_size},
        {NGHTTP2_SETTINGS_HEADER_TABLE_SIZE, cf->hpack_table_size},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, cf->max_header_list_size},
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
    };
    uint64_t conn_win = (uint64_t)cf->initial_window_size * cf->max_concurrent_streams;
    if (conn_win > 0x7fffffff)
        conn_win = 0x7fffffff;
    if (nghttp2_submit_settings(h2->s, NGHTTP2_FLAG_NONE, iv, LP_ARRAY_LEN(iv)) ||
        nghttp2_session_set_local_window_size(h2->s, NGHTTP2_FLAG_NONE, 0, (int32_t)conn_win)) {
        nghttp2_session_del(h2->s);
        free(h2);
        return -1;
    }
    h2->win_start = uv_now(c->ep.env->loop);
    c->h2 = h2;
    c->flags |= LP_CF_H2;
    h2_count(h2, LP_WM_H2_CONNS);
    return 0;
}

void lp_h2_input(lp_conn_t *c)
{
    lp_h2_t *h2 = c->h2;
    lp_endpoint_t *ep = &c->ep;
    int eof = 0;
    lp_h2_mem_wake(&h2->mem);
    h2->depth++;
    while (!h2_closing(h2) && !h2->bye) {
        if (ep->rbuf && ep->rpos < ep->rlen) {
            ssize_t rv = nghttp2_session_mem_recv(h2->s, (const uint8_t *)ep->rbuf->data + ep->rpos,
                                                  ep->rlen - ep->rpos);
            ep->rpos = ep->rlen;
            lp_ep_release_rbuf(ep); /* all used (DATA is copied): room to decrypt more */
            if (rv < 0) {
                if (rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS)
                    h2_count(h2, LP_WM_H2_FLOOD_CONT);
                else if (rv == NGHTTP2_ERR_FLOODED) /* our ACKs the client does not read */
                    h2_count(h2, LP_WM_H2_FLOOD_CONTROL);
                char ip[LP_IP_TEXT];
                lp_conn_ip_text(c, ip);
                lp_log_info("%s: HTTP/2: %s: closing", ip, nghttp2_strerror((int)rv));
                /* The client hears why (when nghttp2 did not tell it already). */
                nghttp2_session_terminate_session(
                    h2->s, rv == NGHTTP2_ERR_FLOODED || rv == NGHTTP2_ERR_TOO_MANY_CONTINUATIONS
                               ? NGHTTP2_ENHANCE_YOUR_CALM
                               : NGHTTP2_PROTOCOL_ERROR);
                h2->bye = 1;
                break;
            }
        }
        if (!ep->tls)
            break;
        int err;
        int rc = lp_ep_tls_fill(ep, &err);
        if (rc < 0)
            eof = 1;
        if (rc <= 0)
            break;
    }
    h2_leave(h2, 1);
    if (eof && !h2_closing(h2))
        lp_conn_close(c);
    else if (h2->trimmed && !h2_closing(h2) && !h2->nopen)
        h2_park(h2); /* a PING or SETTINGS on an idle connection: back to sleep */
}

void lp_h2_written(lp_conn_t *c)
{
    lp_h2_t *h2 = c->h2;
    lp_h2_mem_wake(&h2->mem);
    if (c->ep.tmode == H2_TM_SEND)
        lp_ep_timer(&c->ep, LP_EP_TM_NONE, 0);
    if (lp_relay_drained(&c->ep) || !c->ep.out_pending) {
        h2->depth++;
        h2_leave(h2, 1);
    }
    if (h2->trimmed && !h2_closing(h2) && !h2->nopen)
        h2_park(h2); /* woken by a write that completed late: back to sleep */
}

void lp_h2_timeout(lp_conn_t *c, int mode)
{
    lp_h2_t *h2 = c->h2;
    lp_h2_mem_wake(&h2->mem);
    if (mode == H2_TM_KICK || mode == H2_TM_STALL) {
        lp_ep_timer(&c->ep, LP_EP_TM_NONE, 0);
        h2->depth++;
        if (mode == H2_TM_STALL)
            h2_stall_check(h2);
        h2_leave(h2, 1);
        return;
    }
    if (mode == H2_TM_IDLE && !h2->nopen && h2_idle_trim(h2))
        return;
    if (mode == H2_TM_IDLE && !h2->nopen && !(c->flags & LP_CF_CLOSE_AFTER)) {
        nghttp2_submit_goaway(h2->s, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h2->s), NGHTTP2_NO_ERROR,
                              NULL, 0);
        h2->goaway = h2->bye = 1;
        h2->depth++;
        h2_leave(h2, 1);
        return;
    }
    if (mode == H2_TM_IDLE)
        return;
    char ip[LP_IP_TEXT];
    lp_conn_ip_text(c, ip);
    if (mode == H2_TM_SEND)
        lp_log_info("%s: client timed out reading the response", ip);
    lp_conn_close(c);
}

void lp_h2_flush(lp_conn_t *c)
{
    lp_h2_t *h2 = c->h2;
    lp_h2_mem_wake(&h2->mem);
    if (h2->depth) {
        h2->want_send = 1;
        return;
    }
    if (!(c->flags & LP_CF_CLOSE_AFTER)) {
        /* The pipeline's flushes (a response's end, body bytes) wait for the end of the
         * loop turn: the other streams' responses that end in it go in the same TLS record
         * and the same write, instead of one SSL_write and one writev each. */
        h2->want_send = 1;
        if (!h2->turn_queued && !h2_closing(h2)) {
            h2->turn_queued = 1;
            lp_list_insert_tail(&lp_ep_worker(&c->ep)->h2_out, &h2->out_link);
        }
        return;
    }
    h2->depth++;
    h2_leave(h2, 0);
}

void lp_h2_flush_turn(lp_worker_t *w)
{
    while (w->h2_out.next != &w->h2_out) {
        lp_h2_t *h2 = LP_CONTAINER_OF(w->h2_out.next, lp_h2_t, out_link);
        lp_list_remove(&h2->out_link);
        h2->turn_queued = 0;
        if (h2_closing(h2))
            continue;
        lp_h2_mem_wake(&h2->mem);
        /* An entry point of its own (no pipeline frame beneath): the full end of a frame. */
        h2->depth++;
        h2_leave(h2, 1);
    }
}

void lp_h2_drain(lp_conn_t *c)
{
    lp_h2_t *h2 = c->h2;
    lp_h2_mem_wake(&h2->mem);
    if (!h2->goaway) {
        nghttp2_submit_goaway(h2->s, NGHTTP2_FLAG_NONE,
                              nghttp2_session_get_last_proc_stream_id(h2->s), NGHTTP2_NO_ERROR,
                              NULL, 0);
        h2->goaway = 1;
    }
    h2->depth++;
    h2_leave(h2, 1);
}

void lp_h2_close(lp_conn_t *c)
{
    lp_h2_t *h2 = c->h2;
    h2->depth++; /* no stream goes while their requests are cut */
    for (lp_list_t *it = h2->streams.next; it != &h2->streams;) {
        lp_h2_stream_t *st = LP_CONTAINER_OF(it, lp_h2_stream_t, link);
        it = it->next;
        if (st->req)
            lp_conn_req_cut(st->req); /* clears st->req */
    }
    h2->depth--;
}

void lp_h2_free(lp_conn_t *c)
{
    lp_h2_t *h2 = c->h2;
    lp_h2_mem_wake(&h2->mem); /* nghttp2_session_del reads the struct */
    if (h2->turn_queued)
        lp_list_remove(&h2->out_link);
    while (h2->streams.next != &h2->streams) {
        lp_h2_stream_t *st = LP_CONTAINER_OF(h2->streams.next, lp_h2_stream_t, link);
        if (st->req) /* cannot be: lp_h2_close cut them; never leave a dangling link */
            st->req->h2s = NULL;
        if (!st->closed) /* nghttp2_session_del tells no on_stream_close */
            h2_count(h2, LP_WM_H2_STREAMS_CLOSED);
        stream_free(st);
    }
    h2_count(h2, LP_WM_H2_CONNS_CLOSED);
    nghttp2_session_del(h2->s);
    free(h2);
    c->h2 = NULL;
    c->flags &= (uint16_t)~LP_CF_H2;
}

void lp_h2_req_gone(lp_req_t *req)
{
    lp_h2_stream_t *st = req->h2s;
    req->h2s = NULL;
    st->req = NULL;
    lp_h2_t *h2 = st->h2;
    if (h2_closing(h2) || st->closed)
        return;
    if (!st->out.eof && !st->reset) {
        /* Ended without its whole response (cut): the client hears it. */
        nghttp2_submit_rst_stream(h2->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        st->reset = 1;
    }
    if (st->in.bytes) { /* body nobody will read: its window goes back */
        nghttp2_session_consume_stream(h2->s, st->id, st->in.bytes);
        lp_h2_bodyq_free(&st->in);
    }
    h2->want_send = 1;
}

/* ---- the response (lp_down_ops_t) ---- */

static int is_conn_specific(const lp_str_t n)
{
    static const lp_str_t drop[] = {
        LP_STR("connection"),        LP_STR("keep-alive"), LP_STR("proxy-connection"), LP_STR("te"),
        LP_STR("transfer-encoding"), LP_STR("upgrade"),    LP_STR("content-length"),
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(drop); i++)
        if (lp_str_ieq(n, drop[i].base, drop[i].len))
            return 1;
    return 0;
}

static int h2_head(lp_req_t *req, const lp_h1_t *rh, int no_body, int has_length, uint64_t length)
{
    lp_h2_stream_t *st = req->h2s;
    lp_h2_t *h2 = st->h2;
    const lp_resp_t *r = &req->resp;
    size_t names = 0;
    int has_date = 0, has_grpc_status = 0;
    for (unsigned i = 0; i < r->nheaders; i++) {
        names += r->headers[i].name.len;
        if (lp_str_ieq(r->headers[i].name, "date", 4))
            has_date = 1;
        else if (lp_str_ieq(r->headers[i].name, "grpc-status", 11))
            has_grpc_status = 1;
    }
    /* A body known to be empty ends the stream with the HEADERS frame: a gRPC trailers-only
     * response stays one (h2_up.c gives an upstream's a length of 0). */
    if (has_length && length == 0)
        no_body = 1;
    /* A gRPC trailers-only response (the proxy's own answers, conn.c, or an upstream's) is
     * :status, content-type, grpc-status and grpc-message in that one frame: a gRPC client
     * shows its other fields as the call's trailing metadata, so the proxy adds none of its
     * own (content-length: 0, date). */
    int trailers_only = no_body && has_grpc_status && (req->flags & LP_RF_GRPC);
    /* nghttp2 copies the list: most heads fit these, a larger one is allocated. */
    nghttp2_nv nv_stack[40];
    char lower_stack[1024];
    int heap = r->nheaders + 3 > LP_ARRAY_LEN(nv_stack) || names + 1 > sizeof(lower_stack);
    nghttp2_nv *nv = heap ? malloc((r->nheaders + 3) * sizeof(*nv)) : nv_stack;
    char *lower = heap ? malloc(names + 1) : lower_stack;
    if (!nv || !lower) {
        if (heap) {
            free(nv);
            free(lower);
        }
        return -1;
    }
    char status[4], clen[24];
    int sc = r->status;
    status[0] = (char)('0' + sc / 100 % 10);
    status[1] = (char)('0' + sc / 10 % 10);
    status[2] = (char)('0' + sc % 10);
    size_t k = 0, off = 0;
    nv[k++] = (nghttp2_nv){(uint8_t *)":status", (uint8_t *)status, 7, 3, NGHTTP2_NV_FLAG_NONE};
    for (unsigned i = 0; i < r->nheaders; i++) {
        const lp_header_t *h = &r->headers[i];
        if (is_conn_specific(h->name))
            continue;
        for (size_t j = 0; j < h->name.len; j++) {
            char ch = h->name.base[j];
            lower[off + j] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
        }
        nv[k++] = (nghttp2_nv){(uint8_t *)lower + off, (uint8_t *)h->value.base, h->name.len,
                               h->value.len, NGHTTP2_NV_FLAG_NONE};
        off += h->name.len;
    }
    if (has_length && !trailers_only) {
        size_t n = lp_u64_to_str(length, 10, clen);
        nv[k++] =
            (nghttp2_nv){(uint8_t *)"content-length", (uint8_t *)clen, 14, n, NGHTTP2_NV_FLAG_NONE};
    }
    if (!has_date && !trailers_only) {
        const char *d = lp_h1_date();
        size_t dlen = strlen(d);
        nv[k++] = (nghttp2_nv){(uint8_t *)"date", (uint8_t *)d, 4, dlen, NGHTTP2_NV_FLAG_NONE};
    }
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = stream_read};
    st->no_body = (uint8_t)no_body;
    int rv = nghttp2_submit_response(h2->s, st->id, nv, k, no_body ? NULL : &prd);
    if (heap) {
        free(nv);
        free(lower);
    }
    h2->want_send = 1;
    return rv ? -1 : 0;
}

static void h2_body(lp_req_t *req, const char *at, size_t len, lp_buf_t *pin)
{
    lp_h2_stream_t *st = req->h2s;
    if (!st || st->no_body || !len)
        return;
    if (!st->out.bytes) { /* the send-stall clock starts with the first byte held */
        st->sent_at = uv_now(st->h2->c->ep.env->loop);
        st->h2->nheld++;
    }
    if (lp_h2_bodyq_add(&st->out, st->h2->c->ep.env->bufs, at, len)) {
        if (!st->out.bytes)
            st->h2->nheld--;
        st->h2->bye = 1;
        return;
    }
    if (st->out.bytes >= LP_HIGH_WATERMARK)
        st->was_full = 1;
    lp_h2_bodyq_wake(&st->out, st->h2->s, st->id);
    st->h2->want_send = 1;
}

static void h2_end(lp_req_t *req)
{
    lp_h2_stream_t *st = req->h2s;
    if (!st)
        return;
    /* (Out of memory for the trailers' copy: none are sent.) */
    (void)lp_h2_bodyq_end(&st->out, st->no_body ? NULL : req->resp.trailers,
                          req->resp.trailers_len);
    lp_h2_bodyq_wake(&st->out, st->h2->s, st->id);
    st->h2->want_send = 1;
}

static int h2_full(const lp_req_t *req)
{
    return req->h2s && req->h2s->out.bytes >= LP_HIGH_WATERMARK;
}

static void h2_flush_op(lp_req_t *req)
{
    if (req->conn)
        lp_h2_flush(req->conn);
}

static void h2_abort(lp_req_t *req)
{
    lp_h2_stream_t *st = req->h2s;
    lp_conn_t *c = req->conn;
    if (st && !st->closed && !st->reset && !h2_closing(st->h2)) {
        nghttp2_submit_rst_stream(st->h2->s, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        st->reset = 1;
    }
    lp_conn_req_cut(req);
    if (c && (c->flags & LP_CF_H2))
        lp_h2_flush(c);
}

static void h2_pump(lp_req_t *req)
{
    lp_h2_stream_t *st = req->h2s;
    if (!st)
        return;
    lp_h2_t *h2 = st->h2;
    h2->depth++;
    stream_pump(st);
    h2_leave(h2, 0);
}

static void h2_finished(lp_req_t *req, lp_conn_t *c, int keep)
{
    if (c && (c->flags & LP_CF_H2))
        lp_h2_flush(c);
}

const lp_down_ops_t lp_h2_down_ops = {
    .head = h2_head,
    .body = h2_body,
    .end = h2_end,
    .full = h2_full,
    .flush = h2_flush_op,
    .abort = h2_abort,
    .pump = h2_pump,
    .finished = h2_finished,
};

/* ---- reload ---- */

void lp_h2_reloaded(lp_worker_t *w)
{
    for (lp_list_t *it = w->conns.next; it != &w->conns;) {
        lp_conn_t *c = LP_CONTAINER_OF(it, lp_conn_t, link);
        it = it->next; /* draining may close c (never another connection) */
        if ((c->flags & LP_CF_H2) && !(c->ep.flags & LP_EPF_CLOSING))
            lp_h2_drain(c);
    }
}
