/*
 * lp_origin: the origin server that luaproxy's integration tests and benchmarks put behind the
 * proxy (and behind nginx, for comparison).
 *
 *   lp_origin [-a ADDR] [-p PORT] [-i ID]
 *
 * A single-threaded libuv HTTP/1.1 server. When it listens it prints "ready PORT\n" on stdout;
 * SIGTERM or SIGINT make it close everything and exit 0. The endpoints are listed in README.md
 * beside this file and in the route table below.
 *
 * How a connection works: bytes read go straight into llhttp. A response is either written at
 * once (the common case: one write of the head and body, built without allocation) or, when it
 * takes time (delays, streaming with backpressure), it is a "job": the parser is paused at the
 * end of that request, the job runs off timers and write callbacks, and when it ends the parser
 * resumes on the bytes that arrived meanwhile. So pipelined requests are answered in order and a
 * streaming response never holds more than STREAM_HIGH unwritten bytes.
 *
 * Every response carries X-Origin-Id, X-Conn-Id (per-process connection counter) and
 * X-Conn-Requests (requests seen on this connection, this one included), which tests use to see
 * whether a proxy reused its upstream connections.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <llhttp.h>
#include <openssl/evp.h>
#include <uv.h>

#define READ_BUF_SIZE  (64 * 1024)
#define PIECE_SIZE     (64 * 1024)   /* a streamed body is written in pieces of this size */
#define STREAM_HIGH    (256 * 1024)  /* a streaming job keeps at most this much unwritten */
#define READ_STOP_HIGH (1024 * 1024) /* stop reading from a peer that does not read answers */
#define READ_STOP_LOW  (256 * 1024)  /* ... and read again once this little is unwritten */
#define PEND_LIMIT     (1024 * 1024) /* input held while a job runs (pipelined requests) */
#define URL_MAX        8192
#define HEAD_BYTES_MAX (64 * 1024) /* URL plus header names and values of one request */
#define HEADERS_MAX    256
#define WS_FRAME_MAX   (16 * 1024 * 1024)
#define LINGER_MS      2000 /* after our FIN, how long we drain the peer's input */
#define NUM_MAX        (UINT64_C(1) << 40)
#define MS_MAX         UINT64_C(3600000)

#define CT_TEXT "text/plain"

typedef struct conn_s conn_t;

/* One uv_write. The memory it writes is static, in inl, or in heap. */
typedef struct wreq_s {
    uv_write_t req; /* first member: on_write casts the request back */
    conn_t *c;
    struct wreq_s *next_free;
    char *heap;   /* owned: bytes the socket could not take at once, copied */
    size_t bytes; /* counted in c->inflight until the callback */
    char inl[32]; /* small bytes of this write (a chunk-size line) */
} wreq_t;

typedef enum { JOB_NONE, JOB_DELAY, JOB_STREAM } job_kind_t;

/* A response that takes more than one write or waits for time to pass. */
typedef struct {
    job_kind_t kind;
    int status;
    int64_t content_length; /* -1: no Content-Length header */
    uint64_t body_left;     /* body bytes not yet queued */
    uint64_t offset;        /* index of the next body byte; picks the pattern byte */
    uint64_t step;          /* bytes between delays: a chunk, or one burst of /slow */
    uint64_t step_left;     /* bytes of the current step not yet queued */
    uint64_t steps_done;
    uint64_t delay_ms; /* before the response (JOB_DELAY) or between steps (JOB_STREAM) */
    char pattern;      /* 'a': byte i is 'a' + i % 26; 'x': all 'x' */
    uint8_t chunked;   /* each step is one chunk, and a last-chunk ends the body */
    uint8_t end_close; /* close the connection after the body */
    uint8_t waiting;   /* the timer runs before the next step */
    uint8_t timer_fired;
    uint8_t chunk_hdr_pending;
} job_t;

enum route {
    R_NOT_FOUND,
    R_ROOT,
    R_FIXED,
    R_ECHO,
    R_HEADERS,
    R_CHUNKED,
    R_LARGE,
    R_NOLENGTH,
    R_SLOW,
    R_DELAY,
    R_CLOSE_MID,
    R_CLOSE_BEFORE,
    R_RESET,
    R_STATUS,
    R_BAD_CL_TE,
    R_BAD_DUP_CL,
    R_BAD_STATUS_LINE,
    R_BAD_CHUNK_SIZE,
    R_WS,
    R_JSON,
};

#define ROUTE(path, route)                                                                         \
    {                                                                                              \
        path, sizeof(path) - 1, route                                                              \
    }

static const struct {
    const char *path;
    size_t len;
    enum route route;
} routes[] = {
    ROUTE("/", R_ROOT),
    ROUTE("/fixed", R_FIXED),
    ROUTE("/echo", R_ECHO),
    ROUTE("/headers", R_HEADERS),
    ROUTE("/chunked", R_CHUNKED),
    ROUTE("/large", R_LARGE),
    ROUTE("/nolength", R_NOLENGTH),
    ROUTE("/slow", R_SLOW),
    ROUTE("/delay", R_DELAY),
    ROUTE("/close-mid", R_CLOSE_MID),
    ROUTE("/close-before", R_CLOSE_BEFORE),
    ROUTE("/reset", R_RESET),
    ROUTE("/status", R_STATUS),
    ROUTE("/bad/cl-te", R_BAD_CL_TE),
    ROUTE("/bad/dup-cl", R_BAD_DUP_CL),
    ROUTE("/bad/status-line", R_BAD_STATUS_LINE),
    ROUTE("/bad/chunk-size", R_BAD_CHUNK_SIZE),
    ROUTE("/ws", R_WS),
    ROUTE("/json", R_JSON),
};

/* A received header: offsets into conn.hbuf. */
typedef struct {
    uint32_t name_off, name_len, val_off, val_len;
} hdr_t;

struct conn_s {
    uv_tcp_t tcp;     /* data = this conn */
    uv_timer_t timer; /* the job's timer, the echo read delay, or the linger timeout */
    uv_shutdown_t shutdown;
    llhttp_t parser; /* data = this conn */
    conn_t *prev, *next;
    uint64_t id;
    uint64_t nreq;    /* requests begun on this connection */
    int handles_open; /* tcp and timer; the conn is freed when both closed */
    size_t inflight;  /* bytes handed to uv_write whose callback has not run */

    /* Input held back while a job runs, or a partial WebSocket frame. */
    char *pend; /* owned */
    size_t pend_off, pend_len, pend_cap;
    size_t ws_need; /* size of the incomplete WebSocket frame at pend_off */

    unsigned closed : 1;      /* uv_close called; memory lives until both close callbacks */
    unsigned closing : 1;     /* no more responses: shutting down, lingering or closed */
    unsigned lingering : 1;   /* our FIN is sent; discarding input until EOF or timeout */
    unsigned eof : 1;         /* the peer sent FIN */
    unsigned reading : 1;     /* uv_read_start is in effect */
    unsigned busy : 1;        /* a job owns the connection; the parser is paused */
    unsigned job_started : 1; /* job_start ran for the current job */
    unsigned driving : 1;     /* conn_drive is on the stack */
    unsigned ws : 1;          /* switched to WebSocket */
    unsigned wq_blocked : 1;  /* reading stopped because the peer does not read */
    unsigned delay_stop : 1;  /* reading stopped by /echo?read_delay_ms */
    unsigned delay_after_parse : 1;

    /* The request being parsed. URL, then header names and values, live in hbuf. */
    char *hbuf; /* owned */
    size_t hlen, hcap;
    hdr_t *hdrs; /* owned */
    unsigned nhdrs, hdrs_cap;
    hdr_t cur;
    unsigned cur_open : 1;
    unsigned headers_done : 1; /* later header callbacks are trailers, ignored */
    unsigned keep_alive : 1;
    unsigned http10 : 1;
    unsigned head : 1;
    unsigned expect_continue : 1;
    unsigned ws_upgrade : 1;
    unsigned echo_active : 1; /* the /echo response head is out, its body follows the request's */
    unsigned echo_chunked : 1;
    size_t url_len;
    size_t path_off, path_len, query_off, query_len;
    unsigned ws_key; /* index + 1 of Sec-WebSocket-Key in hdrs, 0 if absent */
    enum route route;
    int err_status; /* status to answer when our callback failed the parse */
    uint64_t echo_delay_ms;
    size_t read_cap; /* read size while an /echo read delay is in effect */

    job_t job;
};

static uv_loop_t *g_loop;
static uv_tcp_t g_listener;
static uv_signal_t g_sigterm, g_sigint;
static conn_t *g_conns;
static uint64_t g_next_conn_id;
static char g_origin_hdr[320]; /* "X-Origin-Id: ID\r\n" */
static size_t g_origin_hdr_len;
static llhttp_settings_t g_settings;
static wreq_t *g_free_wreqs;
static unsigned g_nfree_wreqs;

/* libuv reads one stream at a time and hands the bytes to on_read at once, so one read buffer
 * serves every connection; what must outlive on_read is copied into conn.pend. */
static char g_rbuf[READ_BUF_SIZE];
static char g_scratch[32 * 1024]; /* response heads; written (or copied) before reuse */
static char g_xs[PIECE_SIZE];
/* /json's bytes: records of an API answer with varied numbers and names, so that a
 * compressor has real work (bench/: gzip of a 16 KiB JSON body). */
static char g_json[PIECE_SIZE];
static char g_alpha[PIECE_SIZE + 26];

static const char crlf[] = "\r\n";
static const char last_chunk[] = "0\r\n\r\n";
static const char continue_100[] = "HTTP/1.1 100 Continue\r\n\r\n";

static void conn_abort(conn_t *c);
static void conn_close_graceful(conn_t *c);
static void conn_drive(conn_t *c);
static void update_reading(conn_t *c);
static void job_pump(conn_t *c);
static void on_timer(uv_timer_t *t);

static void *xrealloc(void *p, size_t n)
{
    p = realloc(p, n);
    if (!p) {
        fprintf(stderr, "lp_origin: out of memory\n");
        abort();
    }
    return p;
}

/* ---- string building ---------------------------------------------------------------------- */

typedef struct {
    char *start, *p, *end;
} sb_t;

static void sb_mem(sb_t *b, const void *s, size_t n)
{
    if ((size_t)(b->end - b->p) < n)
        n = (size_t)(b->end - b->p); /* cannot happen: URL_MAX keeps heads far below the size */
    memcpy(b->p, s, n);
    b->p += n;
}

#define sb_lit(b, s) sb_mem((b), "" s, sizeof(s) - 1) /* s must be a literal */

static void sb_str(sb_t *b, const char *s)
{
    sb_mem(b, s, strlen(s));
}

static size_t fmt_u64(char *out, uint64_t v)
{
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static size_t fmt_hex(char *out, uint64_t v)
{
    static const char digits[] = "0123456789abcdef";
    char tmp[24];
    size_t n = 0;
    do {
        tmp[n++] = digits[v & 15];
        v >>= 4;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

static void sb_u64(sb_t *b, uint64_t v)
{
    char tmp[24];
    sb_mem(b, tmp, fmt_u64(tmp, v));
}

/* A growable buffer for bodies built per request (/headers). */
typedef struct {
    char *p; /* owned */
    size_t len, cap;
} dbuf_t;

static void dbuf_mem(dbuf_t *d, const void *s, size_t n)
{
    if (d->len + n > d->cap) {
        d->cap = (d->len + n) * 2 + 256;
        d->p = xrealloc(d->p, d->cap);
    }
    memcpy(d->p + d->len, s, n);
    d->len += n;
}

#define dbuf_lit(d, s) dbuf_mem((d), "" s, sizeof(s) - 1)

/* Length of the valid UTF-8 sequence at s, or 0. */
static size_t utf8_seq(const unsigned char *s, size_t n)
{
    size_t len;
    unsigned char lo = 0x80, hi = 0xbf;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        len = 2;
    else if (s[0] >= 0xe0 && s[0] <= 0xef)
        len = 3;
    else if (s[0] >= 0xf0 && s[0] <= 0xf4)
        len = 4;
    else
        return 0;
    if (s[0] == 0xe0)
        lo = 0xa0;
    else if (s[0] == 0xed)
        hi = 0x9f;
    else if (s[0] == 0xf0)
        lo = 0x90;
    else if (s[0] == 0xf4)
        hi = 0x8f;
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if (s[i] < 0x80 || s[i] > 0xbf)
            return 0;
    return len;
}

/* A JSON string. Valid UTF-8 passes through; other bytes become \u00XX (read as Latin-1), so
 * the output is valid JSON whatever the header bytes were. */
static void dbuf_json_str(dbuf_t *d, const char *str, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *)str;
    dbuf_lit(d, "\"");
    for (size_t i = 0; i < n;) {
        unsigned char ch = s[i];
        size_t run = i;
        while (run < n && s[run] >= 0x20 && s[run] < 0x80 && s[run] != '"' && s[run] != '\\')
            run++;
        if (run > i) {
            dbuf_mem(d, s + i, run - i);
            i = run;
            continue;
        }
        if (ch == '"' || ch == '\\') {
            char esc[2] = {'\\', (char)ch};
            dbuf_mem(d, esc, 2);
            i++;
        } else if (ch >= 0x80 && utf8_seq(s + i, n - i)) {
            size_t len = utf8_seq(s + i, n - i);
            dbuf_mem(d, s + i, len);
            i += len;
        } else {
            char esc[6] = {'\\', 'u', '0', '0', hex[ch >> 4], hex[ch & 15]};
            dbuf_mem(d, esc, 6);
            i++;
        }
    }
    dbuf_lit(d, "\"");
}

/* ---- writing ------------------------------------------------------------------------------ */

static wreq_t *wreq_get(conn_t *c)
{
    wreq_t *w = g_free_wreqs;
    if (w) {
        g_free_wreqs = w->next_free;
        g_nfree_wreqs--;
    } else {
        w = xrealloc(NULL, sizeof *w);
    }
    w->c = c;
    w->heap = NULL;
    w->bytes = 0;
    return w;
}

static void wreq_put(wreq_t *w)
{
    free(w->heap);
    if (g_nfree_wreqs >= 1024) {
        free(w);
        return;
    }
    w->next_free = g_free_wreqs;
    g_free_wreqs = w;
    g_nfree_wreqs++;
}

static void on_write(uv_write_t *req, int status)
{
    wreq_t *w = (wreq_t *)req;
    conn_t *c = w->c;
    c->inflight -= w->bytes;
    wreq_put(w);
    if (c->closed)
        return;
    if (status < 0) {
        conn_abort(c);
        return;
    }
    if (c->wq_blocked && c->inflight <= READ_STOP_LOW)
        c->wq_blocked = 0;
    if (c->job.kind == JOB_STREAM && c->job_started && !c->job.waiting)
        job_pump(c);
    update_reading(c);
}

/* Queues a write of memory that outlives it (static, or w->inl / w->heap). */
static int wreq_submit(conn_t *c, wreq_t *w, const uv_buf_t *bufs, unsigned n)
{
    size_t total = 0;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    w->bytes = total;
    c->inflight += total;
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, bufs, n, on_write) != 0) {
        c->inflight -= total;
        wreq_put(w);
        conn_abort(c);
        return -1;
    }
    if (c->inflight > READ_STOP_HIGH)
        c->wq_blocked = 1;
    return 0;
}

/* Writes bytes that need not outlive the call: what the socket does not take at once is copied.
 * This is the fast path, usually one writev and no allocation. Returns -1 when the connection
 * failed (and was closed). */
static int conn_write(conn_t *c, const uv_buf_t *bufs, unsigned n)
{
    size_t total = 0, done = 0;
    if (c->closed)
        return -1;
    for (unsigned i = 0; i < n; i++)
        total += bufs[i].len;
    int r = uv_try_write((uv_stream_t *)&c->tcp, bufs, n);
    if (r >= 0) {
        done = (size_t)r;
    } else if (r != UV_EAGAIN) {
        conn_abort(c);
        return -1;
    }
    if (done == total)
        return 0;
    wreq_t *w = wreq_get(c);
    w->heap = xrealloc(NULL, total - done);
    size_t at = 0, skip = done;
    for (unsigned i = 0; i < n; i++) {
        size_t len = bufs[i].len;
        if (skip >= len) {
            skip -= len;
            continue;
        }
        memcpy(w->heap + at, bufs[i].base + skip, len - skip);
        at += len - skip;
        skip = 0;
    }
    uv_buf_t b = uv_buf_init(w->heap, (unsigned)(total - done));
    return wreq_submit(c, w, &b, 1);
}

static const char *reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 203:
        return "Non-Authoritative Information";
    case 204:
        return "No Content";
    case 205:
        return "Reset Content";
    case 206:
        return "Partial Content";
    case 300:
        return "Multiple Choices";
    case 301:
        return "Moved Permanently";
    case 302:
        return "Found";
    case 303:
        return "See Other";
    case 304:
        return "Not Modified";
    case 307:
        return "Temporary Redirect";
    case 308:
        return "Permanent Redirect";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 502:
        return "Bad Gateway";
    case 503:
        return "Service Unavailable";
    case 504:
        return "Gateway Timeout";
    default:
        return "Unknown";
    }
}

/* Starts a response head in g_scratch with the given status line (CRLF included) and the
 * headers every response carries. */
static void head_begin_line(conn_t *c, sb_t *b, const char *line)
{
    b->start = b->p = g_scratch;
    b->end = g_scratch + sizeof g_scratch;
    sb_str(b, line);
    sb_mem(b, g_origin_hdr, g_origin_hdr_len);
    sb_lit(b, "X-Conn-Id: ");
    sb_u64(b, c->id);
    sb_lit(b, "\r\nX-Conn-Requests: ");
    sb_u64(b, c->nreq);
    sb_lit(b, "\r\n");
}

static void head_begin(conn_t *c, sb_t *b, int status)
{
    b->start = b->p = g_scratch;
    b->end = g_scratch + sizeof g_scratch;
    sb_lit(b, "HTTP/1.1 ");
    sb_u64(b, (uint64_t)status);
    sb_lit(b, " ");
    sb_str(b, reason_phrase(status));
    sb_lit(b, "\r\n");
    sb_mem(b, g_origin_hdr, g_origin_hdr_len);
    sb_lit(b, "X-Conn-Id: ");
    sb_u64(b, c->id);
    sb_lit(b, "\r\nX-Conn-Requests: ");
    sb_u64(b, c->nreq);
    sb_lit(b, "\r\n");
}

/* Ends the head: the Connection header when needed, and the empty line. */
static uv_buf_t head_end(conn_t *c, sb_t *b)
{
    if (!c->keep_alive)
        sb_lit(b, "Connection: close\r\n");
    else if (c->http10)
        sb_lit(b, "Connection: keep-alive\r\n");
    sb_lit(b, "\r\n");
    return uv_buf_init(b->start, (unsigned)(b->p - b->start));
}

/* A complete response in one write. 204 and 304 get neither Content-Length nor body. */
static void send_simple(conn_t *c, int status, const char *ctype, const char *body, size_t len)
{
    sb_t b;
    int bodyless = status == 204 || status == 304;
    head_begin(c, &b, status);
    if (ctype) {
        sb_lit(&b, "Content-Type: ");
        sb_str(&b, ctype);
        sb_lit(&b, "\r\n");
    }
    if (!bodyless) {
        sb_lit(&b, "Content-Length: ");
        sb_u64(&b, len);
        sb_lit(&b, "\r\n");
    }
    uv_buf_t bufs[2] = {head_end(c, &b), uv_buf_init((char *)body, (unsigned)len)};
    conn_write(c, bufs, (c->head || bodyless || len == 0) ? 1 : 2);
}

/* ---- reading and the connection's life ---------------------------------------------------- */

static size_t pend_size(const conn_t *c)
{
    return c->pend_len - c->pend_off;
}

static void pend_append(conn_t *c, const char *data, size_t len)
{
    if (c->pend_off > 0) {
        memmove(c->pend, c->pend + c->pend_off, pend_size(c));
        c->pend_len -= c->pend_off;
        c->pend_off = 0;
    }
    if (c->pend_len + len > c->pend_cap) {
        c->pend_cap = c->pend_len + len < 16384 ? 16384 : (c->pend_len + len) * 2;
        c->pend = xrealloc(c->pend, c->pend_cap);
    }
    memcpy(c->pend + c->pend_len, data, len);
    c->pend_len += len;
}

static void on_handle_close(uv_handle_t *h)
{
    conn_t *c = h->data;
    if (--c->handles_open > 0)
        return;
    free(c->pend);
    free(c->hbuf);
    free(c->hdrs);
    free(c);
}

/* Closes at once; queued writes are dropped. */
static void conn_abort(conn_t *c)
{
    if (c->closed)
        return;
    c->closed = 1;
    c->closing = 1;
    if (c->prev)
        c->prev->next = c->next;
    else
        g_conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    uv_close((uv_handle_t *)&c->tcp, on_handle_close);
    uv_close((uv_handle_t *)&c->timer, on_handle_close);
}

/* Closes with RST instead of FIN. */
static void conn_reset(conn_t *c)
{
    uv_os_fd_t fd;
    struct linger lg = {1, 0};
    if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
    conn_abort(c);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    conn_t *c = req->handle->data;
    if (c->closed)
        return;
    if (status < 0 || c->eof) {
        conn_abort(c);
        return;
    }
    /* Closing with unread input would send RST, which can destroy the response before the
     * peer read it; so read and discard until the peer's FIN, for a while. */
    c->lingering = 1;
    uv_timer_start(&c->timer, on_timer, LINGER_MS, 0);
    update_reading(c);
}

/* Closes after the queued writes went out: FIN, then linger. */
static void conn_close_graceful(conn_t *c)
{
    if (c->closing)
        return;
    c->closing = 1;
    c->job.kind = JOB_NONE;
    uv_timer_stop(&c->timer);
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        conn_abort(c);
        return;
    }
    update_reading(c);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    conn_t *c = h->data;
    size_t n = sizeof g_rbuf;
    if (c->echo_active && c->echo_delay_ms && c->read_cap < n)
        n = c->read_cap;
    *buf = uv_buf_init(g_rbuf, (unsigned)n);
}

static size_t pend_limit(const conn_t *c)
{
    return c->ws_need > PEND_LIMIT ? c->ws_need : PEND_LIMIT;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void update_reading(conn_t *c)
{
    int want;
    if (c->closed)
        return;
    if (c->eof)
        want = 0;
    else if (c->lingering)
        want = 1;
    else
        want = !c->closing && !c->delay_stop && !c->wq_blocked && pend_size(c) < pend_limit(c);
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
            c->reading = 1;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = 0;
    }
}

/* ---- jobs --------------------------------------------------------------------------------- */

static void job_init(conn_t *c, job_kind_t kind, int status, char pattern)
{
    memset(&c->job, 0, sizeof c->job);
    c->job.kind = kind;
    c->job.status = status;
    c->job.pattern = pattern;
    c->job.content_length = -1;
}

/* Hands the connection to the job; returns 1 so that on_message_complete pauses the parser. */
static int job_begin(conn_t *c)
{
    job_t *j = &c->job;
    if (j->kind == JOB_STREAM) {
        if (j->chunked && c->http10) {
            /* HTTP/1.0 has no chunked coding: delimit the body by closing. */
            j->chunked = 0;
            j->end_close = 1;
            c->keep_alive = 0;
        }
        if (c->head)
            j->body_left = 0;
    }
    c->busy = 1;
    c->job_started = 0;
    return 1;
}

/* The job is over: answer the next request, if there is to be one. */
static void job_done(conn_t *c)
{
    c->busy = 0;
    c->job_started = 0;
    if (!c->keep_alive) {
        conn_close_graceful(c);
        return;
    }
    llhttp_resume(&c->parser);
    conn_drive(c);
    update_reading(c);
}

static void job_end(conn_t *c)
{
    int end_close = c->job.end_close;
    c->job.kind = JOB_NONE;
    if (end_close) {
        c->busy = 0;
        conn_close_graceful(c);
        return;
    }
    job_done(c);
}

static uv_buf_t pattern_buf(char pattern, uint64_t offset, size_t n)
{
    if (pattern == 'x')
        return uv_buf_init(g_xs, (unsigned)n);
    return uv_buf_init(g_alpha + offset % 26, (unsigned)n);
}

/* Queues body pieces until STREAM_HIGH bytes are unwritten or a delay is due; write callbacks
 * and the timer call it again. */
static void job_pump(conn_t *c)
{
    job_t *j = &c->job;
    while (!c->closed && j->kind == JOB_STREAM && !j->waiting) {
        if (j->step_left == 0) {
            if (j->body_left == 0) {
                if (j->chunked && !c->head) {
                    wreq_t *w = wreq_get(c);
                    uv_buf_t b = uv_buf_init((char *)last_chunk, sizeof last_chunk - 1);
                    if (wreq_submit(c, w, &b, 1) < 0)
                        return;
                }
                job_end(c);
                return;
            }
            if (j->steps_done > 0 && j->delay_ms > 0 && !j->timer_fired) {
                j->waiting = 1;
                uv_timer_start(&c->timer, on_timer, j->delay_ms, 0);
                return;
            }
            j->timer_fired = 0;
            j->step_left = j->step < j->body_left ? j->step : j->body_left;
            j->chunk_hdr_pending = j->chunked;
            j->steps_done++;
        }
        if (c->inflight >= STREAM_HIGH)
            return;
        size_t n = j->step_left < PIECE_SIZE ? (size_t)j->step_left : PIECE_SIZE;
        wreq_t *w = wreq_get(c);
        uv_buf_t b[3];
        unsigned nb = 0;
        if (j->chunk_hdr_pending) {
            size_t hn = fmt_hex(w->inl, j->step_left);
            memcpy(w->inl + hn, crlf, 2);
            b[nb++] = uv_buf_init(w->inl, (unsigned)(hn + 2));
            j->chunk_hdr_pending = 0;
        }
        b[nb++] = pattern_buf(j->pattern, j->offset, n);
        j->offset += n;
        j->step_left -= n;
        j->body_left -= n;
        if (j->chunked && j->step_left == 0)
            b[nb++] = uv_buf_init((char *)crlf, 2);
        if (wreq_submit(c, w, b, nb) < 0)
            return;
    }
}

static void job_start(conn_t *c)
{
    job_t *j = &c->job;
    sb_t b;
    c->job_started = 1;
    if (j->kind == JOB_DELAY) {
        uv_timer_start(&c->timer, on_timer, j->delay_ms, 0);
        return;
    }
    head_begin(c, &b, j->status);
    sb_lit(&b, "Content-Type: " CT_TEXT "\r\n");
    if (j->content_length >= 0) {
        sb_lit(&b, "Content-Length: ");
        sb_u64(&b, (uint64_t)j->content_length);
        sb_lit(&b, "\r\n");
    }
    if (j->chunked)
        sb_lit(&b, "Transfer-Encoding: chunked\r\n");
    uv_buf_t head = head_end(c, &b);
    if (conn_write(c, &head, 1) < 0)
        return;
    job_pump(c);
}

static void on_timer(uv_timer_t *t)
{
    conn_t *c = t->data;
    if (c->closed)
        return;
    if (c->lingering) {
        conn_abort(c);
        return;
    }
    if (c->delay_stop) {
        c->delay_stop = 0;
        conn_drive(c);
        update_reading(c);
        return;
    }
    if (c->job.kind == JOB_DELAY) {
        send_simple(c, 200, CT_TEXT, "delayed", 7);
        if (!c->closed)
            job_end(c);
    } else if (c->job.kind == JOB_STREAM) {
        c->job.waiting = 0;
        c->job.timer_fired = 1;
        job_pump(c);
    }
}

/* ---- requests ----------------------------------------------------------------------------- */

/* Finds NAME=DIGITS in the query; 1 if found. */
static int query_num(const conn_t *c, const char *name, uint64_t *out)
{
    const char *q = c->hbuf + c->query_off;
    size_t ql = c->query_len, nl = strlen(name), i = 0;
    while (i < ql) {
        size_t j = i;
        while (j < ql && q[j] != '&')
            j++;
        if (j - i > nl + 1 && memcmp(q + i, name, nl) == 0 && q[i + nl] == '=') {
            uint64_t v = 0;
            size_t k;
            for (k = i + nl + 1; k < j && q[k] >= '0' && q[k] <= '9'; k++)
                v = v > NUM_MAX ? v : v * 10 + (uint64_t)(q[k] - '0');
            if (k == j) {
                *out = v;
                return 1;
            }
        }
        i = j + 1;
    }
    return 0;
}

static uint64_t query_get(const conn_t *c, const char *name, uint64_t def, uint64_t max)
{
    uint64_t v;
    if (!query_num(c, name, &v))
        return def;
    return v > max ? max : v;
}

static void route_request(conn_t *c)
{
    const char *u = c->hbuf;
    size_t n = c->url_len, start = 0, end;
    /* Absolute form (http://host/path): look at the path only. */
    if (n > 7 && (strncasecmp(u, "http://", 7) == 0 || strncasecmp(u, "https://", 8) == 0)) {
        start = u[4] == ':' ? 7 : 8;
        while (start < n && u[start] != '/' && u[start] != '?')
            start++;
    }
    for (end = start; end < n && u[end] != '?' && u[end] != '#'; end++)
        ;
    c->path_off = start;
    c->path_len = end - start;
    c->query_off = end < n && u[end] == '?' ? end + 1 : end;
    c->query_len = n - c->query_off;
    c->route = R_NOT_FOUND;
    for (size_t i = 0; i < sizeof routes / sizeof routes[0]; i++) {
        if (routes[i].len == c->path_len && memcmp(routes[i].path, u + start, c->path_len) == 0) {
            c->route = routes[i].route;
            break;
        }
    }
}

static int ci_eq(const char *s, size_t n, const char *lit)
{
    return strlen(lit) == n && strncasecmp(s, lit, n) == 0;
}

static int ci_contains(const char *s, size_t n, const char *needle)
{
    size_t nl = strlen(needle);
    for (size_t i = 0; i + nl <= n; i++)
        if (strncasecmp(s + i, needle, nl) == 0)
            return 1;
    return 0;
}

static int hbuf_append(conn_t *c, const char *at, size_t len)
{
    if (c->hlen + len > HEAD_BYTES_MAX) {
        c->err_status = 431;
        return -1;
    }
    if (c->hlen + len > c->hcap) {
        c->hcap = c->hlen + len < 4096 ? 4096 : (c->hlen + len) * 2;
        c->hbuf = xrealloc(c->hbuf, c->hcap);
    }
    memcpy(c->hbuf + c->hlen, at, len);
    c->hlen += len;
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    conn_t *c = p->data;
    c->nreq++;
    c->hlen = 0;
    c->url_len = 0;
    c->nhdrs = 0;
    c->cur_open = 0;
    c->headers_done = 0;
    c->expect_continue = 0;
    c->ws_upgrade = 0;
    c->ws_key = 0;
    c->echo_active = 0;
    c->head = 0;
    c->route = R_NOT_FOUND;
    c->err_status = 0;
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (c->url_len + len > URL_MAX) {
        c->err_status = 414;
        return -1;
    }
    c->url_len += len;
    return hbuf_append(c, at, len);
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (c->headers_done)
        return 0;
    if (!c->cur_open) {
        c->cur_open = 1;
        c->cur.name_off = (uint32_t)c->hlen;
        c->cur.name_len = 0;
        c->cur.val_off = (uint32_t)c->hlen;
        c->cur.val_len = 0;
    }
    c->cur.name_len += (uint32_t)len;
    return hbuf_append(c, at, len);
}

static int on_header_field_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    if (!c->headers_done)
        c->cur.val_off = (uint32_t)c->hlen;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (c->headers_done)
        return 0;
    c->cur.val_len += (uint32_t)len;
    return hbuf_append(c, at, len);
}

static int on_header_value_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    if (c->headers_done)
        return 0;
    if (c->nhdrs == HEADERS_MAX) {
        c->err_status = 431;
        return -1;
    }
    if (c->nhdrs == c->hdrs_cap) {
        c->hdrs_cap = c->hdrs_cap ? c->hdrs_cap * 2 : 16;
        c->hdrs = xrealloc(c->hdrs, c->hdrs_cap * sizeof *c->hdrs);
    }
    c->hdrs[c->nhdrs++] = c->cur;
    c->cur_open = 0;
    return 0;
}

static void echo_begin(conn_t *c)
{
    llhttp_t *p = &c->parser;
    sb_t b;
    const char *framing;
    int64_t cl = -1;
    c->echo_active = 1;
    c->echo_chunked = 0;
    c->echo_delay_ms = query_get(c, "read_delay_ms", 0, MS_MAX);
    c->read_cap = (size_t)query_get(c, "read_size", 16384, READ_BUF_SIZE);
    if (c->read_cap == 0)
        c->read_cap = 1;
    if (p->flags & F_CHUNKED) {
        framing = "chunked";
    } else if (p->flags & F_CONTENT_LENGTH) {
        framing = "length";
        cl = (int64_t)p->content_length;
    } else {
        framing = "none";
    }
    if (cl < 0) {
        if (c->http10)
            c->keep_alive = 0; /* no chunked coding in HTTP/1.0: the close ends the body */
        else
            c->echo_chunked = 1;
    }
    head_begin(c, &b, 200);
    sb_lit(&b, "Content-Type: application/octet-stream\r\nX-Echo-Method: ");
    sb_str(&b, llhttp_method_name((llhttp_method_t)p->method));
    sb_lit(&b, "\r\nX-Echo-Url: ");
    sb_mem(&b, c->hbuf, c->url_len);
    sb_lit(&b, "\r\nX-Echo-Body-Framing: ");
    sb_str(&b, framing);
    sb_lit(&b, "\r\n");
    if (cl >= 0) {
        sb_lit(&b, "Content-Length: ");
        sb_u64(&b, (uint64_t)cl);
        sb_lit(&b, "\r\n");
    } else if (c->echo_chunked) {
        sb_lit(&b, "Transfer-Encoding: chunked\r\n");
    }
    uv_buf_t head = head_end(c, &b);
    conn_write(c, &head, 1);
}

static int on_headers_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    if (c->closing)
        return -1;
    c->headers_done = 1;
    /* Only /ws switches protocols, and it does so itself; everything else is plain HTTP. */
    p->upgrade = 0;
    c->keep_alive = llhttp_should_keep_alive(p) != 0;
    c->http10 = p->http_major == 1 && p->http_minor == 0;
    c->head = p->method == HTTP_HEAD;
    route_request(c);
    for (unsigned i = 0; i < c->nhdrs; i++) {
        const hdr_t *h = &c->hdrs[i];
        const char *name = c->hbuf + h->name_off, *val = c->hbuf + h->val_off;
        size_t vlen = h->val_len;
        while (vlen > 0 && (val[vlen - 1] == ' ' || val[vlen - 1] == '\t'))
            vlen--;
        if (ci_eq(name, h->name_len, "expect"))
            c->expect_continue = ci_eq(val, vlen, "100-continue");
        else if (ci_eq(name, h->name_len, "upgrade"))
            c->ws_upgrade = ci_contains(val, vlen, "websocket");
        else if (ci_eq(name, h->name_len, "sec-websocket-key"))
            c->ws_key = i + 1;
    }
    if (c->expect_continue && !c->http10) {
        uv_buf_t b = uv_buf_init((char *)continue_100, sizeof continue_100 - 1);
        if (conn_write(c, &b, 1) < 0)
            return -1;
    }
    if (c->route == R_ECHO) {
        echo_begin(c);
        /* With a read delay, the body is parsed in read_cap slices with pauses between them;
         * pausing here starts the slicing at the first body byte. */
        if (c->echo_delay_ms && (p->flags & F_CHUNKED || p->content_length > 0))
            return c->closed ? -1 : HPE_PAUSED;
    }
    return c->closed ? -1 : 0;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    conn_t *c = p->data;
    if (c->closed)
        return -1;
    if (!c->echo_active || c->head)
        return 0;
    if (c->echo_delay_ms)
        c->delay_after_parse = 1;
    if (c->echo_chunked) {
        char hx[24];
        size_t hn = fmt_hex(hx, len);
        memcpy(hx + hn, crlf, 2);
        uv_buf_t b[3] = {uv_buf_init(hx, (unsigned)(hn + 2)),
                         uv_buf_init((char *)at, (unsigned)len), uv_buf_init((char *)crlf, 2)};
        conn_write(c, b, 3);
    } else {
        uv_buf_t b = uv_buf_init((char *)at, (unsigned)len);
        conn_write(c, &b, 1);
    }
    return c->closed ? -1 : 0;
}

static void send_headers_json(conn_t *c)
{
    llhttp_t *p = &c->parser;
    dbuf_t d = {0};
    char ver[48];
    const char *method = llhttp_method_name((llhttp_method_t)p->method);
    dbuf_lit(&d, "{\"method\":");
    dbuf_json_str(&d, method, strlen(method));
    dbuf_lit(&d, ",\"url\":");
    dbuf_json_str(&d, c->hbuf, c->url_len);
    int n = snprintf(ver, sizeof ver, ",\"version\":\"%d.%d\",\"headers\":[", p->http_major,
                     p->http_minor);
    dbuf_mem(&d, ver, (size_t)n);
    for (unsigned i = 0; i < c->nhdrs; i++) {
        const hdr_t *h = &c->hdrs[i];
        if (i)
            dbuf_lit(&d, ",");
        dbuf_lit(&d, "[");
        dbuf_json_str(&d, c->hbuf + h->name_off, h->name_len);
        dbuf_lit(&d, ",");
        dbuf_json_str(&d, c->hbuf + h->val_off, h->val_len);
        dbuf_lit(&d, "]");
    }
    dbuf_lit(&d, "]}");
    send_simple(c, 200, "application/json", d.p, d.len);
    free(d.p);
}

static void send_bad(conn_t *c)
{
    sb_t b;
    const char *body = "hello";
    c->keep_alive = 0;
    switch (c->route) {
    case R_BAD_STATUS_LINE:
        head_begin_line(c, &b, "HTTP/1.1 2x0 OK\r\n");
        sb_lit(&b, "Content-Length: 5\r\n");
        break;
    case R_BAD_CL_TE:
        head_begin(c, &b, 200);
        sb_lit(&b, "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n");
        body = "5\r\nhello\r\n0\r\n\r\n";
        break;
    case R_BAD_DUP_CL:
        head_begin(c, &b, 200);
        sb_lit(&b, "Content-Length: 5\r\nContent-Length: 7\r\n");
        break;
    default: /* R_BAD_CHUNK_SIZE */
        head_begin(c, &b, 200);
        sb_lit(&b, "Transfer-Encoding: chunked\r\n");
        body = "zz\r\nhello\r\n0\r\n\r\n";
        break;
    }
    uv_buf_t bufs[2] = {head_end(c, &b), uv_buf_init((char *)body, (unsigned)strlen(body))};
    if (conn_write(c, bufs, c->head ? 1 : 2) == 0)
        conn_close_graceful(c);
}

static int ws_accept(conn_t *c)
{
    static const char guid[] = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    const hdr_t *k = c->ws_key ? &c->hdrs[c->ws_key - 1] : NULL;
    unsigned char md[EVP_MAX_MD_SIZE], acc[64];
    char cat[256];
    unsigned mdlen = 0;
    sb_t b;
    if (!c->ws_upgrade || !k || k->val_len == 0 || k->val_len > 128) {
        static const char msg[] = "websocket upgrade required\n";
        send_simple(c, 400, CT_TEXT, msg, sizeof msg - 1);
        return 0;
    }
    memcpy(cat, c->hbuf + k->val_off, k->val_len);
    memcpy(cat + k->val_len, guid, sizeof guid - 1);
    if (!EVP_Digest(cat, k->val_len + sizeof guid - 1, md, &mdlen, EVP_sha1(), NULL)) {
        send_simple(c, 500, CT_TEXT, "sha1 failed\n", 12);
        return 0;
    }
    int alen = EVP_EncodeBlock(acc, md, (int)mdlen);
    head_begin_line(c, &b, "HTTP/1.1 101 Switching Protocols\r\n");
    sb_lit(&b, "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    sb_mem(&b, acc, (size_t)alen);
    sb_lit(&b, "\r\n\r\n");
    uv_buf_t head = uv_buf_init(b.start, (unsigned)(b.p - b.start));
    if (conn_write(c, &head, 1) < 0)
        return 0;
    c->ws = 1;
    return 1; /* the HTTP parser stays paused for good; the rest of the bytes are frames */
}

/* The response to a complete request. Returns 1 when the parser must pause (a job was begun,
 * or the connection became a WebSocket). */
static int dispatch(conn_t *c)
{
    job_t *j = &c->job;
    uint64_t n;
    switch (c->route) {
    case R_ROOT:
        send_simple(c, 200, CT_TEXT, "hello", 5);
        return 0;
    case R_FIXED:
        if (!query_num(c, "size", &n)) {
            send_simple(c, 200, CT_TEXT, "hello", 5);
            return 0;
        }
        if (n > NUM_MAX)
            n = NUM_MAX;
        if (n <= PIECE_SIZE) {
            send_simple(c, 200, CT_TEXT, g_xs, n);
            return 0;
        }
        job_init(c, JOB_STREAM, 200, 'x');
        j->content_length = (int64_t)n;
        j->body_left = j->step = n;
        return job_begin(c);
    case R_JSON:
        n = query_get(c, "size", 16384, PIECE_SIZE);
        send_simple(c, 200, "application/json", g_json, n);
        return 0;
    case R_HEADERS:
        send_headers_json(c);
        return 0;
    case R_CHUNKED: {
        uint64_t chunks = query_get(c, "chunks", 3, 1 << 20);
        uint64_t size = query_get(c, "size", 10, 1 << 20);
        job_init(c, JOB_STREAM, 200, 'a');
        j->chunked = 1;
        j->body_left = chunks * size;
        j->step = size;
        j->delay_ms = query_get(c, "delay_ms", 0, MS_MAX);
        return job_begin(c);
    }
    case R_LARGE:
    case R_NOLENGTH:
    case R_CLOSE_MID:
        n = query_get(c, "bytes", c->route == R_LARGE ? 1 << 20 : 1000, NUM_MAX);
        job_init(c, JOB_STREAM, 200, 'a');
        j->body_left = j->step = n;
        if (c->route == R_NOLENGTH) {
            c->keep_alive = 0;
            j->end_close = 1;
        } else if (c->route == R_CLOSE_MID) {
            j->content_length = (int64_t)n;
            j->body_left = j->step = n / 2;
            j->end_close = 1;
        } else {
            j->content_length = (int64_t)n;
        }
        return job_begin(c);
    case R_SLOW:
        n = query_get(c, "bytes", 100, NUM_MAX);
        job_init(c, JOB_STREAM, 200, 'a');
        j->content_length = (int64_t)n;
        j->body_left = n;
        j->step = query_get(c, "chunk", 10, NUM_MAX);
        if (j->step == 0)
            j->step = 1;
        j->delay_ms = query_get(c, "delay_ms", 10, MS_MAX);
        return job_begin(c);
    case R_DELAY:
        job_init(c, JOB_DELAY, 200, 'a');
        j->delay_ms = query_get(c, "ms", 100, MS_MAX);
        return job_begin(c);
    case R_CLOSE_BEFORE:
        conn_close_graceful(c);
        return 0;
    case R_RESET:
        conn_reset(c);
        return 0;
    case R_STATUS: {
        int code = (int)query_get(c, "code", 200, 999);
        char body[32];
        if (code < 200) {
            static const char msg[] = "code must be 200..999\n";
            send_simple(c, 400, CT_TEXT, msg, sizeof msg - 1);
            return 0;
        }
        if (code == 204 || code == 304) {
            send_simple(c, code, NULL, NULL, 0);
            return 0;
        }
        int len = snprintf(body, sizeof body, "status %d\n", code);
        send_simple(c, code, CT_TEXT, body, (size_t)len);
        return 0;
    }
    case R_BAD_CL_TE:
    case R_BAD_DUP_CL:
    case R_BAD_STATUS_LINE:
    case R_BAD_CHUNK_SIZE:
        send_bad(c);
        return 0;
    case R_WS:
        return ws_accept(c);
    case R_ECHO: /* answered while the request body streams in */
    case R_NOT_FOUND:
        break;
    }
    send_simple(c, 404, CT_TEXT, "not found\n", 10);
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    conn_t *c = p->data;
    int pause = 0;
    if (c->closing)
        return HPE_PAUSED;
    if (c->route == R_ECHO) {
        if (c->echo_chunked && !c->head) {
            uv_buf_t b = uv_buf_init((char *)last_chunk, sizeof last_chunk - 1);
            conn_write(c, &b, 1);
        }
        c->echo_active = 0;
    } else {
        pause = dispatch(c);
    }
    if (c->closing || pause)
        return HPE_PAUSED;
    if (!c->keep_alive) {
        conn_close_graceful(c);
        return HPE_PAUSED;
    }
    return 0;
}

/* ---- WebSocket ---------------------------------------------------------------------------- */

static void ws_send(conn_t *c, unsigned b0, const unsigned char *payload, size_t n)
{
    unsigned char h[10];
    size_t hl;
    h[0] = (unsigned char)b0;
    if (n < 126) {
        h[1] = (unsigned char)n;
        hl = 2;
    } else if (n <= 0xffff) {
        h[1] = 126;
        h[2] = (unsigned char)(n >> 8);
        h[3] = (unsigned char)n;
        hl = 4;
    } else {
        h[1] = 127;
        for (int i = 0; i < 8; i++)
            h[2 + i] = (unsigned char)((uint64_t)n >> (56 - 8 * i));
        hl = 10;
    }
    uv_buf_t b[2] = {uv_buf_init((char *)h, (unsigned)hl),
                     uv_buf_init((char *)payload, (unsigned)n)};
    conn_write(c, b, n ? 2 : 1);
}

static void ws_fail(conn_t *c, unsigned code)
{
    unsigned char payload[2] = {(unsigned char)(code >> 8), (unsigned char)code};
    ws_send(c, 0x88, payload, 2);
    conn_close_graceful(c);
}

static void ws_frame(conn_t *c, unsigned b0, const unsigned char *payload, size_t n)
{
    switch (b0 & 0x0f) {
    case 0x0: /* continuation */
    case 0x1: /* text */
    case 0x2: /* binary */
        ws_send(c, b0 & 0x8f, payload, n);
        break;
    case 0x8: /* close: answer with the same status, then close */
        ws_send(c, 0x88, payload, n);
        conn_close_graceful(c);
        break;
    case 0x9: /* ping */
        ws_send(c, 0x8a, payload, n);
        break;
    case 0xa: /* pong */
        break;
    default:
        ws_fail(c, 1002);
        break;
    }
}

/* Handles the complete frames in data (unmasking in place); returns the bytes consumed. */
static size_t ws_parse(conn_t *c, char *data, size_t len)
{
    size_t off = 0;
    c->ws_need = 0;
    while (!c->closing && len - off >= 2) {
        unsigned char *f = (unsigned char *)data + off;
        size_t avail = len - off, hl = 2;
        uint64_t plen = f[1] & 0x7f;
        if (plen == 126) {
            if (avail < 4)
                break;
            plen = (uint64_t)f[2] << 8 | f[3];
            hl = 4;
        } else if (plen == 127) {
            if (avail < 10)
                break;
            plen = 0;
            for (int i = 0; i < 8; i++)
                plen = plen << 8 | f[2 + i];
            hl = 10;
        }
        if (plen > WS_FRAME_MAX) {
            ws_fail(c, 1009);
            break;
        }
        if (f[1] & 0x80)
            hl += 4;
        if (avail < hl + plen) {
            c->ws_need = hl + (size_t)plen;
            break;
        }
        unsigned char *payload = f + hl;
        if (f[1] & 0x80) {
            const unsigned char *mask = f + hl - 4;
            for (size_t i = 0; i < plen; i++)
                payload[i] ^= mask[i & 3];
        }
        ws_frame(c, f[0], payload, (size_t)plen);
        off += hl + (size_t)plen;
    }
    return off;
}

/* ---- input -------------------------------------------------------------------------------- */

/* Parses input; returns the bytes consumed (fewer when the parser paused). */
static size_t conn_parse(conn_t *c, char *data, size_t len)
{
    if (c->ws)
        return ws_parse(c, data, len);
    llhttp_errno_t err = llhttp_execute(&c->parser, data, len);
    if (err == HPE_OK)
        return len;
    if (err == HPE_PAUSED || err == HPE_PAUSED_UPGRADE) {
        /* A pause that left no job and no WebSocket is the one before a delayed echo body. */
        if (!c->busy && !c->ws && !c->closing)
            llhttp_resume(&c->parser);
        return (size_t)(llhttp_get_error_pos(&c->parser) - data);
    }
    if (c->closing)
        return len;
    if (c->echo_active) {
        /* The echo response is under way: there is no way left to say 400. */
        conn_abort(c);
        return len;
    }
    int status = c->err_status ? c->err_status : 400;
    char body[64];
    int n = snprintf(body, sizeof body, "%s\n", reason_phrase(status));
    c->keep_alive = 0;
    c->head = 0;
    send_simple(c, status, CT_TEXT, body, (size_t)n);
    conn_close_graceful(c);
    return len;
}

/* Parses until all is consumed or something stops parsing: a job, an echo read delay, a
 * partial WebSocket frame, closing. Returns the bytes consumed. */
static size_t parse_loop(conn_t *c, char *data, size_t len)
{
    size_t off = 0;
    while (off < len && !c->closing && !c->busy && !c->delay_stop) {
        size_t n = len - off;
        if (c->echo_active && c->echo_delay_ms && n > c->read_cap)
            n = c->read_cap;
        size_t used = conn_parse(c, data + off, n);
        off += used;
        if (c->delay_after_parse) {
            c->delay_after_parse = 0;
            if (c->echo_active && !c->closing) {
                c->delay_stop = 1;
                uv_timer_start(&c->timer, on_timer, c->echo_delay_ms, 0);
            }
        }
        if (used == 0 && !c->busy)
            break; /* a partial WebSocket frame */
    }
    return off;
}

/* Parses held input while nothing stops it, and starts jobs. */
static void conn_drive(conn_t *c)
{
    if (c->driving)
        return;
    c->driving = 1;
    while (!c->closing) {
        if (c->busy && !c->job_started) {
            job_start(c);
            continue;
        }
        if (c->busy || c->delay_stop || pend_size(c) == 0)
            break;
        size_t n = parse_loop(c, c->pend + c->pend_off, pend_size(c));
        c->pend_off += n;
        if (n == 0 && !c->busy)
            break;
    }
    if (pend_size(c) == 0)
        c->pend_off = c->pend_len = 0;
    if (c->eof && !c->busy && !c->delay_stop && !c->closing)
        conn_close_graceful(c);
    c->driving = 0;
}

static void conn_input(conn_t *c, char *data, size_t len)
{
    if (c->closing)
        return;
    if (!c->busy && !c->delay_stop && pend_size(c) == 0) {
        size_t n = parse_loop(c, data, len);
        if (n < len && !c->closing)
            pend_append(c, data + n, len - n);
    } else {
        pend_append(c, data, len);
    }
    conn_drive(c);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    conn_t *c = s->data;
    if (nread == 0 || c->closed)
        return;
    if (nread < 0) {
        if (nread != UV_EOF || c->lingering) {
            conn_abort(c);
            return;
        }
        c->eof = 1;
        update_reading(c);
        conn_drive(c);
        return;
    }
    if (!c->lingering)
        conn_input(c, buf->base, (size_t)nread);
    update_reading(c);
}

/* ---- process ------------------------------------------------------------------------------ */

static void on_connection(uv_stream_t *server, int status)
{
    if (status < 0)
        return;
    conn_t *c = calloc(1, sizeof *c);
    if (!c)
        return;
    uv_tcp_init(g_loop, &c->tcp);
    uv_timer_init(g_loop, &c->timer);
    c->tcp.data = c;
    c->timer.data = c;
    c->handles_open = 2;
    c->next = g_conns;
    if (g_conns)
        g_conns->prev = c;
    g_conns = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp) != 0) {
        conn_abort(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->id = ++g_next_conn_id;
    llhttp_init(&c->parser, HTTP_REQUEST, &g_settings);
    c->parser.data = c;
    update_reading(c);
}

static void on_signal(uv_signal_t *s, int signum)
{
    /* One line, so that a test that sees its origin vanish can tell who stopped it. */
    fprintf(stderr, "lp_origin: signal %d, exiting\n", signum);
    uv_close((uv_handle_t *)&g_listener, NULL);
    uv_close((uv_handle_t *)&g_sigterm, NULL);
    uv_close((uv_handle_t *)&g_sigint, NULL);
    while (g_conns)
        conn_abort(g_conns);
}

static void usage(FILE *f)
{
    fprintf(f, "usage: lp_origin [-a ADDR] [-p PORT] [-i ID]\n"
               "  -a ADDR  address to listen on (default 127.0.0.1; IPv6 allowed)\n"
               "  -p PORT  port (default 0: ephemeral; the port is printed as \"ready PORT\")\n"
               "  -i ID    value of the X-Origin-Id response header (default \"origin\")\n");
}

/* g_json: "[" then records, deterministic (an LCG), cut at the buffer's end. */
static void fill_json(void)
{
    static const char *names[] = {"alice", "bob", "carol", "dave", "erin", "frank", "grace"};
    static const char *cities[] = {"Lyon", "Porto", "Oslo", "Kyoto", "Lima", "Cairo"};
    unsigned x = 2463534242u;
    size_t o = 0;
    g_json[o++] = '[';
    for (unsigned i = 0; o < sizeof g_json; i++) {
        char rec[256];
        x = x * 1103515245u + 12345u;
        int n = snprintf(rec, sizeof rec,
                         "{\"id\":%u,\"name\":\"%s%u\",\"email\":\"%s.%u@example.com\","
                         "\"active\":%s,\"score\":%u.%02u,\"city\":\"%s\",\"tags\":[\"t%u\","
                         "\"t%u\"],\"created\":\"2026-%02u-%02uT%02u:%02u:00Z\"},",
                         1000 + i * 7 + (x >> 28), names[(x >> 8) % 7], (x >> 12) % 1000,
                         names[(x >> 16) % 7], (x >> 4) % 10000, (x >> 3) & 1 ? "true" : "false",
                         (x >> 10) % 1000, (x >> 20) % 100, cities[(x >> 24) % 6], (x >> 5) % 50,
                         (x >> 13) % 50, 1 + (x >> 7) % 12, 1 + (x >> 9) % 28, (x >> 11) % 24,
                         (x >> 14) % 60);
        size_t k = (size_t)n < sizeof g_json - o ? (size_t)n : sizeof g_json - o;
        memcpy(g_json + o, rec, k);
        o += k;
    }
}

int main(int argc, char **argv)
{
    const char *addr = "127.0.0.1", *id = "origin";
    int port = 0, opt, r;
    struct sockaddr_storage ss;
    while ((opt = getopt(argc, argv, "a:p:i:h")) != -1) {
        switch (opt) {
        case 'a':
            addr = optarg;
            break;
        case 'p': {
            char *end;
            long v = strtol(optarg, &end, 10);
            port = *optarg && !*end && v >= 0 && v <= 65535 ? (int)v : -1;
            break;
        }
        case 'i':
            id = optarg;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (optind != argc || port < 0 || port > 65535 || strlen(id) > 256 || strpbrk(id, "\r\n")) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);

    g_origin_hdr_len =
        (size_t)snprintf(g_origin_hdr, sizeof g_origin_hdr, "X-Origin-Id: %s\r\n", id);
    memset(g_xs, 'x', sizeof g_xs);
    fill_json();
    for (size_t i = 0; i < sizeof g_alpha; i++)
        g_alpha[i] = (char)('a' + i % 26);

    llhttp_settings_init(&g_settings);
    g_settings.on_message_begin = on_message_begin;
    g_settings.on_url = on_url;
    g_settings.on_header_field = on_header_field;
    g_settings.on_header_field_complete = on_header_field_complete;
    g_settings.on_header_value = on_header_value;
    g_settings.on_header_value_complete = on_header_value_complete;
    g_settings.on_headers_complete = on_headers_complete;
    g_settings.on_body = on_body;
    g_settings.on_message_complete = on_message_complete;

    if (uv_ip4_addr(addr, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(addr, port, (struct sockaddr_in6 *)&ss) != 0) {
        fprintf(stderr, "lp_origin: bad address %s\n", addr);
        return 2;
    }
    g_loop = uv_default_loop();
    uv_tcp_init(g_loop, &g_listener);
    if ((r = uv_tcp_bind(&g_listener, (struct sockaddr *)&ss, 0)) != 0 ||
        (r = uv_listen((uv_stream_t *)&g_listener, 1024, on_connection)) != 0) {
        fprintf(stderr, "lp_origin: listen on %s:%d: %s\n", addr, port, uv_strerror(r));
        return 1;
    }
    struct sockaddr_storage bound;
    int blen = sizeof bound;
    uv_tcp_getsockname(&g_listener, (struct sockaddr *)&bound, &blen);
    int bport = bound.ss_family == AF_INET6 ? ntohs(((struct sockaddr_in6 *)&bound)->sin6_port)
                                            : ntohs(((struct sockaddr_in *)&bound)->sin_port);
    uv_signal_init(g_loop, &g_sigterm);
    uv_signal_init(g_loop, &g_sigint);
    uv_signal_start(&g_sigterm, on_signal, SIGTERM);
    uv_signal_start(&g_sigint, on_signal, SIGINT);
    printf("ready %d\n", bport);
    fflush(stdout);

    uv_run(g_loop, UV_RUN_DEFAULT);
    uv_loop_close(g_loop);
    while (g_free_wreqs) {
        wreq_t *w = g_free_wreqs;
        g_free_wreqs = w->next_free;
        free(w);
    }
    return 0;
}
