/* engine/http1.c fed the same bytes in every way a socket could deliver them: whole, one
 * byte at a time, split at every position, split at every pair of positions, and with a
 * head arena that starts tiny and grows (lp_h1_rebase). Each way must parse exactly the
 * same: the same heads (every field, header and flag), bodies, errors and the same offset
 * where an upgraded connection's other protocol begins.
 *
 * The driver does what conn.c and upstream.c do: execute, on HEAD resume and execute again
 * even with no input left, on DONE resume and go on (requests: the same parser with fresh
 * storage; responses: a new parser per request, told when the request was HEAD), stop on
 * ERROR or UPGRADE; for responses, lp_h1_finish at the end of the input when the case says
 * the upstream closed. It also checks that a message never completes without its head
 * having been reported (conn.c and upstream.c act on the head; a DONE without one ends a
 * request with nothing sent). */
#include <stdlib.h>
#include "lp_test.h"
#include "http1.h"

typedef struct {
    const char *name;
    llhttp_type_t type;
    const char *data;
    size_t len;         /* 0: strlen(data) */
    unsigned head_mask; /* responses: bit k set when request k was HEAD */
    int finish;         /* responses: the upstream closes after the input */
    size_t max_header;  /* 0: the default */
    const char *must;   /* the whole run's summary contains this */
} rt_case_t;

typedef struct {
    lp_h1_t h;
    const rt_case_t *c;
    char *arena;
    size_t arena_cap;
    int small; /* the arena starts at 16 bytes and grows */
    lp_header_t headers[64];
    int k;      /* messages begun (responses: requests answered) */
    int in_msg; /* a head was reported and its message has not completed */
    size_t consumed;
    char *out; /* the summary */
    size_t out_len, out_cap;
    char *body; /* the current message's body */
    size_t body_len, body_cap;
} rt_t;

static void out_mem(char **buf, size_t *len, size_t *cap, const char *s, size_t n)
{
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1)
            c *= 2;
        *buf = realloc(*buf, c);
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = 0;
}

static void outf(rt_t *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void outf(rt_t *r, const char *fmt, ...)
{
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        out_mem(&r->out, &r->out_len, &r->out_cap, tmp,
                (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

/* A slice, escaped so binary bytes and NULs compare and print. */
static void out_slice(rt_t *r, const char *tag, lp_str_t s)
{
    outf(r, " %s=", tag);
    if (!s.base) {
        outf(r, "(none)");
        return;
    }
    for (size_t i = 0; i < s.len; i++) {
        unsigned char ch = (unsigned char)s.base[i];
        if (ch >= 0x21 && ch < 0x7f && ch != '\\')
            out_mem(&r->out, &r->out_len, &r->out_cap, (const char *)&ch, 1);
        else
            outf(r, "\\x%02x", ch);
    }
}

static int rt_body(lp_h1_t *h, const char *at, size_t len)
{
    rt_t *r = h->ud;
    if (!r->in_msg)
        outf(r, "BODY-BEFORE-HEAD\n");
    out_mem(&r->body, &r->body_len, &r->body_cap, at, len);
    return 0;
}

static int rt_grow(lp_h1_t *h, size_t need)
{
    rt_t *r = h->ud;
    size_t cap = r->arena_cap * 2;
    while (cap < need)
        cap *= 2;
    char *bigger = malloc(cap);
    lp_h1_rebase(h, bigger, cap);
    free(r->arena);
    r->arena = bigger;
    r->arena_cap = cap;
    return 0;
}

static void rt_storage(rt_t *r)
{
    lp_h1_set_storage(&r->h, r->arena, r->arena_cap, r->headers, 64);
}

static void rt_parser(rt_t *r)
{
    lp_h1_init(&r->h, r->c->type, r, rt_body);
    if (r->c->max_header)
        r->h.max_header_size = r->c->max_header;
    if (r->small)
        r->h.grow = rt_grow;
    rt_storage(r);
    if (r->c->type == HTTP_RESPONSE && r->k < 32 && (r->c->head_mask >> r->k) & 1)
        r->h.flags |= LP_H1F_HEAD_REQ;
}

static void rt_head(rt_t *r)
{
    const lp_h1_t *h = &r->h;
    if (r->in_msg)
        outf(r, "HEAD-INSIDE-A-MESSAGE\n");
    r->in_msg = 1;
    r->body_len = 0;
    outf(r, "HEAD m=%d st=%d 1.%d f=%x cl=%llu", lp_h1_method(h), lp_h1_status(h), lp_h1_minor(h),
         h->flags, (unsigned long long)h->content_length);
    out_slice(r, "url", h->url);
    out_slice(r, "path", h->path);
    out_slice(r, "auth", h->authority);
    out_slice(r, "host", h->host);
    out_slice(r, "reason", h->reason);
    for (unsigned i = 0; i < h->nconn_tokens; i++)
        out_slice(r, "conn", h->conn_tokens[i]);
    for (unsigned i = 0; i < h->nheaders; i++) {
        out_slice(r, "name", h->headers[i].name);
        out_slice(r, "value", h->headers[i].value);
    }
    outf(r, "\n");
}

static void rt_done(rt_t *r, const char *how)
{
    if (!r->in_msg)
        outf(r, "DONE-WITHOUT-HEAD ");
    r->in_msg = 0;
    outf(r, "%s body=%zu", how, r->body_len);
    out_slice(r, "", (lp_str_t){r->body ? r->body : "", r->body_len});
    outf(r, "\n");
    r->body_len = 0;
}

/* Feeds one piece; returns 0 to go on, 1 when parsing stopped (error, upgrade). */
static int rt_piece(rt_t *r, const char *src, size_t n)
{
    char *buf = malloc(n ? n : 1); /* exactly n bytes: ASan sees a read past the piece */
    memcpy(buf, src, n);
    size_t pos = 0;
    int stop = 0;
    while (!stop && (pos < n || r->h.after_head)) {
        size_t used = 0;
        lp_h1_event_t ev = lp_h1_execute(&r->h, buf + pos, n - pos, &used);
        pos += used;
        r->consumed += used;
        switch (ev) {
        case LP_H1_NEED_MORE:
            if (pos != n)
                outf(r, "NEED_MORE-WITH-INPUT-LEFT\n");
            break;
        case LP_H1_HEAD:
            rt_head(r);
            lp_h1_resume(&r->h);
            break;
        case LP_H1_PAUSED: /* the body callback never asks */
            outf(r, "PAUSED\n");
            stop = 1;
            break;
        case LP_H1_DONE:
            rt_done(r, "DONE");
            lp_h1_resume(&r->h);
            r->k++;
            if (r->c->type == HTTP_RESPONSE)
                rt_parser(r);
            else
                rt_storage(r);
            break;
        case LP_H1_UPGRADE:
            outf(r, "UPGRADE at=%zu\n", r->consumed);
            stop = 1;
            break;
        case LP_H1_ERROR:
            /* The status only: the reason names whichever check saw the fault first, and
             * that can depend on the split (a bare LF in a response head: "bare LF in the
             * message head" byte by byte, llhttp's "Invalid header value char" whole). */
            outf(r, "ERROR %d\n", r->h.err_status);
            stop = 1;
            break;
        }
    }
    free(buf);
    return stop;
}

/* Parses the case's bytes cut at the given positions (ascending, inside 1..len-1). Returns
 * the summary (malloc'd). */
static char *rt_run(const rt_case_t *c, const size_t *cuts, size_t ncuts, int small)
{
    size_t len = c->len ? c->len : strlen(c->data);
    rt_t *r = calloc(1, sizeof(*r));
    r->c = c;
    r->small = small;
    r->arena_cap = small ? 16 : 65536;
    r->arena = malloc(r->arena_cap);
    rt_parser(r);
    size_t at = 0;
    int stop = 0;
    for (size_t i = 0; i <= ncuts && !stop; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        stop = rt_piece(r, c->data + at, end - at);
        at = end;
    }
    if (!stop && r->c->finish && r->in_msg) {
        if (lp_h1_finish(&r->h) == LP_H1_DONE)
            rt_done(r, "FINISH-DONE");
        else
            outf(r, "FINISH-ERROR %d\n", r->h.err_status);
    }
    if (!stop)
        outf(r, "END in_msg=%d\n", r->in_msg);
    char *out = r->out ? r->out : strdup("");
    free(r->body);
    free(r->arena);
    free(r);
    return out;
}

/* Compares one way of feeding with the whole run; reports the first difference. */
static int rt_same(const rt_case_t *c, const char *want, const size_t *cuts, size_t ncuts,
                   int small, const char *how)
{
    char *got = rt_run(c, cuts, ncuts, small);
    int ok = strcmp(got, want) == 0;
    if (!ok) {
        lp_test_fail(__FILE__, __LINE__, "%s: %s gives a different parse", c->name, how);
        fprintf(stderr, "  cuts:");
        for (size_t i = 0; i < ncuts; i++)
            fprintf(stderr, " %zu", cuts[i]);
        fprintf(stderr, "\n  whole:\n%s  this way:\n%s", want, got);
    }
    free(got);
    return ok;
}

static void rt_check(const rt_case_t *c)
{
    size_t len = c->len ? c->len : strlen(c->data);
    char *want = rt_run(c, NULL, 0, 0);
    if (c->must && !strstr(want, c->must)) {
        lp_test_fail(__FILE__, __LINE__, "%s: expected \"%s\" in:\n%s", c->name, c->must, want);
    }
    if (strstr(want, "WITHOUT-HEAD") || strstr(want, "BEFORE-HEAD") ||
        strstr(want, "INSIDE-A-MESSAGE") || strstr(want, "INPUT-LEFT") || strstr(want, "PAUSED")) {
        lp_test_fail(__FILE__, __LINE__, "%s: the parser broke the driver's contract:\n%s", c->name,
                     want);
    }
    size_t *cuts = malloc((len + 1) * sizeof(*cuts));
    for (size_t i = 1; i < len; i++)
        cuts[i - 1] = i;
    if (!rt_same(c, want, cuts, len ? len - 1 : 0, 0, "one byte at a time") ||
        !rt_same(c, want, NULL, 0, 1, "a growing arena") ||
        !rt_same(c, want, cuts, len ? len - 1 : 0, 1, "a growing arena, one byte at a time"))
        goto out;
    for (size_t i = 1; i < len; i++) {
        size_t one[1] = {i};
        if (!rt_same(c, want, one, 1, 0, "two pieces"))
            goto out;
    }
    /* Three pieces: every pair of cut points, for the shorter messages. */
    if (len <= 400) {
        for (size_t i = 1; i < len; i++)
            for (size_t j = i + 1; j < len; j++) {
                size_t two[2] = {i, j};
                if (!rt_same(c, want, two, 2, 0, "three pieces"))
                    goto out;
            }
    }
out:
    free(cuts);
    free(want);
}

#define REQ(name, data, must)                                                                      \
    {                                                                                              \
        name, HTTP_REQUEST, data, 0, 0, 0, 0, must                                                 \
    }
#define RESP(name, data, mask, finish, must)                                                       \
    {                                                                                              \
        name, HTTP_RESPONSE, data, 0, mask, finish, 0, must                                        \
    }

static const rt_case_t requests[] = {
    REQ("simple GET",
        "GET /a/b?c=d HTTP/1.1\r\nHost: Example.com:8080\r\nX-Long-Header-Name: some value "
        "with spaces  \r\nX-Empty:\r\nX-Tab:\tv\t\r\nConnection: keep-alive, X-Hop\r\nX-Hop: "
        "1\r\n\r\n",
        "DONE body=0"),
    REQ("pipelined GET, POST, chunked POST, close",
        "GET /one HTTP/1.1\r\nHost: a\r\n\r\n"
        "POST /two HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello"
        "POST /three HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
        "5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nTrailer-X: y\r\n\r\n"
        "GET /four HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
        "DONE body=0 =\nEND in_msg=0"),
    REQ("empty lines before the request line", "\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "DONE body=0"),
    REQ("HTTP/1.0 keep-alive then 1.0 close",
        "GET /k HTTP/1.0\r\nConnection: keep-alive\r\n\r\nGET /c HTTP/1.0\r\n\r\n", " 1.0 f=4"),
    REQ("Expect: 100-continue with a body",
        "PUT /e HTTP/1.1\r\nHost: a\r\nExpect: 100-Continue\r\nContent-Length: 3\r\n\r\nabc",
        "f=12"),
    REQ("absolute-form with a query only",
        "GET http://Example.com:81?q=1 HTTP/1.1\r\nHost: other\r\n\r\n", "path=/?q=1"),
    REQ("absolute-form https with a path",
        "GET https://h.test/p/q?x HTTP/1.1\r\nHost: h.test\r\n\r\n", "auth=h.test"),
    REQ("OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n", "path=*"),
    REQ("upgrade with frame bytes after the head",
        "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: "
        "websocket\r\n\r\n\x81\x02hi",
        "UPGRADE at=70"),
    {"a body with NULs and CRLFs", HTTP_REQUEST,
     "POST /b HTTP/1.1\r\nHost: a\r\nContent-Length: 8\r\n\r\n\0\r\n\0\r\n\xff\x01", 56, 0, 0, 0,
     "body=8"},
    REQ("bare LF in the head", "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\r\n", "ERROR 400"),
    REQ("bare LF ending the head", "GET / HTTP/1.1\r\nHost: a\r\n\n", "ERROR 400"),
    REQ("obs-fold", "GET / HTTP/1.1\r\nHost: a\r\nX-A: b\r\n c\r\n\r\n", "ERROR 400"),
    REQ("two spaces before the target", "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", "ERROR 400"),
    REQ("two spaces after the target", "GET /  HTTP/1.1\r\nHost: a\r\n\r\n", "ERROR 400"),
    REQ("CL and TE",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
        "ERROR 400"),
    REQ("TE other than chunked",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", "ERROR 400"),
    REQ("two Host fields", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", "ERROR 400"),
    REQ("bad Host", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", "ERROR 400"),
    REQ("bad header name", "GET / HTTP/1.1\r\nHost: a\r\nX(A): 1\r\n\r\n", "ERROR 400"),
    REQ("HTTP/2.0", "GET / HTTP/2.0\r\nHost: a\r\n\r\n", "ERROR 505"),
    REQ("CONNECT", "CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "ERROR 405"),
    REQ("unknown expectation", "GET / HTTP/1.1\r\nHost: a\r\nExpect: magic\r\n\r\n", "ERROR 417"),
    REQ("error after a good request",
        "GET /ok HTTP/1.1\r\nHost: a\r\n\r\nGET /bad HTTP/1.1\r\n\r\n", "DONE body=0 =\nERROR 400"),
    {"header section over the limit", HTTP_REQUEST,
     "GET / HTTP/1.1\r\nHost: a\r\nX-One: 0123456789\r\nX-Two: 0123456789\r\n\r\n", 0, 0, 0, 30,
     "ERROR 431"},
};

static const rt_case_t responses[] = {
    RESP("Content-Length",
         "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello", 0, 0,
         "DONE body=5"),
    RESP("chunked with extensions and trailers",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a=b\r\nhello\r\n"
         "A\r\n0123456789\r\n0\r\nX-Trailer: y\r\n\r\n",
         0, 0, "DONE body=15"),
    RESP("interim 100 and 103 before the answer",
         "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n"
         "HTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nnew",
         0, 0, "st=201"),
    RESP("HEAD answer then GET answer",
         "HTTP/1.1 200 OK\r\nContent-Length: 12\r\nTransfer-Encoding: chunked\r\n\r\n"
         "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
         0x1, 0, "ERROR 502"), /* CL and TE: refused even for HEAD */
    RESP("HEAD answers with a length",
         "HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: "
         "2\r\n\r\nok",
         0x1, 0, "DONE body=2"),
    RESP("204, 304, then a zero length",
         "HTTP/1.1 204 No Content\r\nContent-Length: 7\r\n\r\n"
         "HTTP/1.1 304 Not Modified\r\nETag: \"x\"\r\n\r\n"
         "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
         0, 0, "END in_msg=0"),
    RESP("close-delimited, finished at EOF",
         "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\nruns until the upstream closes", 0, 1,
         "FINISH-DONE body=30"),
    RESP("HTTP/1.0 close-delimited", "HTTP/1.0 200 OK\r\nServer: old\r\n\r\nold body", 0, 1,
         "FINISH-DONE body=8"),
    RESP("101 upgrade with frame bytes",
         "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: "
         "websocket\r\n\r\n\x81\x05hello",
         0, 0, "UPGRADE at=77"),
    RESP("truncated Content-Length body", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", 0, 1,
         "FINISH-ERROR 502"),
    RESP("truncated chunk", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc", 0, 1,
         "FINISH-ERROR 502"),
    RESP("no reason phrase", "HTTP/1.1 200 \r\nContent-Length: 1\r\n\r\nx", 0, 0, "DONE body=1"),
    RESP("a long reason phrase",
         "HTTP/1.1 599 A rather long reason phrase that makes the arena grow a few times over\r\n"
         "Content-Length: 0\r\n\r\n",
         0, 0, "st=599"),
    RESP("bare LF", "HTTP/1.1 200 OK\nContent-Length: 0\n\n", 0, 0, "ERROR 502"),
    RESP("CL and TE",
         "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 0,
         0, "ERROR 502"),
    RESP("several TE",
         "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 0,
         0, "ERROR 502"),
    RESP("HTTP/2 status line", "HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n", 0, 0, "ERROR 502"),
    /* No Connection: upgrade: llhttp still ends HTTP at any 101 and completes the message,
     * while http1.c treats the 101 as interim and never reports its head. */
    RESP("101 without Connection: upgrade",
         "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x05hello", 0, 0, NULL),
};

static void test_requests(void)
{
    for (size_t i = 0; i < LP_ARRAY_LEN(requests); i++)
        rt_check(&requests[i]);
}

static void test_responses(void)
{
    for (size_t i = 0; i < LP_ARRAY_LEN(responses); i++)
        rt_check(&responses[i]);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_requests),
    LP_TEST_ENTRY(test_responses),
};

LP_TEST_MAIN(tests)
