/* proxy.http's response parser (lua/luaproxy/http.lua): the engine's HTTP/1.1 response
 * parsing (http1.c over llhttp, with the same checks the proxy path applies to upstreams)
 * as an object Lua feeds with the bytes its socket received. No I/O and no Lua state here:
 * the transport is proxy.tcp(), the framing decisions are llhttp's.
 *
 * One object per exchange (recycled by Lua between exchanges with lp_ffi_hresp_reset). It
 * owns its head arena, its header array and its body buffer; the slices it hands out point
 * into them and stay valid until the next feed, reset or free. */
#include <stdlib.h>
#include "http1.h"
struct lp_req_s; /* named by lua_api.h */
#include "lua_api.h"

#define HRESP_ARENA0      4096
#define HRESP_MAX_HEAD    65536
#define HRESP_MAX_HEADERS 128

struct lp_hresp_s {
    lp_h1_t h1;
    char *arena; /* owned: the head's bytes (grows up to HRESP_MAX_HEAD) */
    size_t arena_cap;
    lp_header_t headers[HRESP_MAX_HEADERS]; /* the head's fields, slices into arena */
    char *body;                             /* owned: body bytes not yet taken by Lua */
    size_t body_len, body_cap;
    size_t body_taken;   /* bytes handed to Lua by the last lp_ffi_hresp_body */
    uint64_t body_total; /* body bytes seen in this message */
    uint64_t max_body;   /* 0: no limit */
    int state;           /* LP_FFI_HR_* bits seen so far */
    int trailing;        /* bytes followed the message: the connection cannot be reused */
    int got;             /* a response byte arrived (lp_ffi_hresp_recv) */
    const char *err;     /* static text: why the response was refused */
    char *packed;        /* owned: lp_ffi_hresp_fields' output */
    size_t packed_cap;
};

static int on_body(lp_h1_t *h, const char *at, size_t len)
{
    lp_hresp_t *r = h->ud;
    r->body_total += len;
    if (r->max_body && r->body_total > r->max_body) {
        r->err = "response body larger than max_body";
        return -1;
    }
    if (lp_grow((void **)&r->body, &r->body_cap, r->body_len + len, 1, 4096)) {
        r->err = "out of memory";
        return -1;
    }
    memcpy(r->body + r->body_len, at, len);
    r->body_len += len;
    return 0;
}

/* The arena is full: a larger one, with the head moved into it. */
static int grow(lp_h1_t *h, size_t need)
{
    lp_hresp_t *r = h->ud;
    size_t cap = r->arena_cap;
    while (cap < need)
        cap *= 2;
    if (cap > HRESP_MAX_HEAD)
        return -1;
    char *na = malloc(cap);
    if (!na)
        return -1;
    lp_h1_rebase(h, na, cap);
    free(r->arena);
    r->arena = na;
    r->arena_cap = cap;
    return 0;
}

lp_hresp_t *lp_ffi_hresp_new(void)
{
    lp_hresp_t *r = calloc(1, sizeof(*r));
    if (!r)
        return NULL;
    r->arena = malloc(HRESP_ARENA0);
    if (!r->arena) {
        free(r);
        return NULL;
    }
    r->arena_cap = HRESP_ARENA0;
    lp_ffi_hresp_reset(r, 0, 0);
    return r;
}

void lp_ffi_hresp_free(lp_hresp_t *r)
{
    if (!r)
        return;
    free(r->arena);
    free(r->body);
    free(r->packed);
    free(r);
}

void lp_ffi_hresp_reset(lp_hresp_t *r, int head_req, double max_body)
{
    lp_h1_init(&r->h1, HTTP_RESPONSE, r, on_body);
    r->h1.grow = grow;
    r->h1.max_header_size = HRESP_MAX_HEAD - 1024;
    lp_h1_set_storage(&r->h1, r->arena, r->arena_cap, r->headers, HRESP_MAX_HEADERS);
    if (head_req)
        r->h1.flags |= LP_H1F_HEAD_REQ; /* no body, whatever the length fields say */
    /* A large buffer from an earlier big body is not kept for the next exchange. */
    if (r->body_cap > 65536) {
        free(r->body);
        r->body = NULL;
        r->body_cap = 0;
    }
    r->body_len = r->body_taken = 0;
    r->body_total = 0;
    r->max_body = max_body > 0 ? (uint64_t)max_body : 0;
    r->state = 0;
    r->trailing = 0;
    r->got = 0;
    r->err = NULL;
}

/* Body bytes Lua took last time are dropped before new ones are added. */
static void drop_taken(lp_hresp_t *r)
{
    if (!r->body_taken)
        return;
    memmove(r->body, r->body + r->body_taken, r->body_len - r->body_taken);
    r->body_len -= r->body_taken;
    r->body_taken = 0;
}

int lp_ffi_hresp_feed(lp_hresp_t *r, const char *data, size_t len)
{
    if (r->err)
        return LP_FFI_EINVAL;
    if (r->state & LP_FFI_HR_DONE) {
        if (len)
            r->trailing = 1;
        return r->state;
    }
    drop_taken(r);
    size_t off = 0;
    for (;;) {
        if (off == len && !r->h1.after_head)
            break;
        size_t used = 0;
        lp_h1_event_t ev = lp_h1_execute(&r->h1, data + off, len - off, &used);
        off += used;
        if (ev == LP_H1_NEED_MORE)
            break;
        if (ev == LP_H1_HEAD) {
            lp_h1_resume(&r->h1);
            r->state |= LP_FFI_HR_HEAD;
            continue;
        }
        if (ev == LP_H1_DONE) {
            r->state |= LP_FFI_HR_DONE;
            if (off < len)
                r->trailing = 1; /* more than one answer to one request */
            break;
        }
        if (!r->err) {
            r->err = ev == LP_H1_UPGRADE ? "unexpected protocol upgrade"
                     : r->h1.err_reason  ? r->h1.err_reason
                                         : "invalid response";
        }
        return LP_FFI_EINVAL;
    }
    return r->state;
}

int lp_ffi_hresp_eof(lp_hresp_t *r)
{
    if (r->err)
        return LP_FFI_EINVAL;
    if (r->state & LP_FFI_HR_DONE)
        return r->state;
    if ((r->state & LP_FFI_HR_HEAD) && (r->h1.flags & LP_H1F_EOF_BODY)) {
        drop_taken(r);
        if (lp_h1_finish(&r->h1) == LP_H1_DONE) {
            r->state |= LP_FFI_HR_DONE;
            r->trailing = 1; /* the connection is gone */
            return r->state;
        }
    }
    r->err = (r->state & LP_FFI_HR_HEAD) ? "connection closed before the body was complete"
                                         : "connection closed before the response head";
    return LP_FFI_EINVAL;
}

int lp_ffi_hresp_status(lp_hresp_t *r)
{
    return (r->state & LP_FFI_HR_HEAD) ? lp_h1_status(&r->h1) : 0;
}

const char *lp_ffi_hresp_body(lp_hresp_t *r, int *len)
{
    drop_taken(r);
    /* One read adds at most what one receive gave, and a buffered body is capped by
     * max_body (below 2 GiB, lua/luaproxy/http.lua): the length fits an int. */
    *len = (int)r->body_len;
    r->body_taken = r->body_len;
    return r->body ? r->body : "";
}

const char *lp_ffi_hresp_fields(lp_hresp_t *r, int *len)
{
    *len = 0;
    if (!(r->state & LP_FFI_HR_HEAD))
        return "";
    size_t need = 0;
    for (unsigned i = 0; i < r->h1.nheaders; i++)
        need += r->h1.headers[i].name.len + r->h1.headers[i].value.len + 2;
    if (need > r->packed_cap) {
        char *np = realloc(r->packed, need);
        if (!np)
            return NULL;
        r->packed = np;
        r->packed_cap = need;
    }
    char *o = r->packed;
    for (unsigned i = 0; i < r->h1.nheaders; i++) {
        const lp_header_t *hd = &r->h1.headers[i];
        memcpy(o, hd->name.base, hd->name.len); /* as the server wrote it (res.header_names) */
        o += hd->name.len;
        *o++ = '\0';
        memcpy(o, hd->value.base, hd->value.len);
        o += hd->value.len;
        *o++ = '\0';
    }
    *len = (int)need; /* under HRESP_MAX_HEAD */
    return r->packed ? r->packed : "";
}

int lp_ffi_hresp_reusable(lp_hresp_t *r)
{
    return (r->state & LP_FFI_HR_DONE) && !r->trailing && !r->err &&
           !(r->h1.flags & LP_H1F_EOF_BODY) && llhttp_should_keep_alive(&r->h1.parser);
}

int lp_ffi_hresp_recv(lp_hresp_t *r, void *sock, int max)
{
    lp_str_t in;
    /* Mode 4 of lp_ffi_tcp_receive: what arrived, at most max bytes (engine/cosock.c). The
     * bytes are parsed where the socket holds them: no Lua string is made for them. */
    int rc = lp_ffi_tcp_receive(sock, 4, max, NULL, 0, 0, &in);
    if (rc == 1)
        return LP_FFI_HR_WAIT;
    if (in.len) {
        r->got = 1;
        int st = lp_ffi_hresp_feed(r, in.base, in.len);
        if (st < 0)
            return st;
    }
    if (rc >= 0)
        return r->state;
    if (strcmp(lp_ffi_tcp_error(sock), "closed") != 0)
        return LP_FFI_HR_ESOCK; /* the socket's message says why */
    return lp_ffi_hresp_eof(r);
}

int lp_ffi_hresp_got(lp_hresp_t *r)
{
    return r->got;
}

const char *lp_ffi_hresp_error(lp_hresp_t *r)
{
    return r->err ? r->err : "";
}
