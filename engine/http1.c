#include <stdio.h>
#include <time.h>
#include "http1.h"
#include "pathnorm.h"

#define H1(p) ((lp_h1_t *)(p)->data)

static int set_error(lp_h1_t *h, int status, const char *reason)
{
    if (!h->err_status) {
        h->err_status = status;
        h->err_reason = reason;
    }
    return HPE_USER;
}

int lp_h1_tchar_token(lp_str_t s)
{
    if (!s.len)
        return 0;
    for (size_t i = 0; i < s.len; i++)
        if (!lp_is_tchar((unsigned char)s.base[i]))
            return 0;
    return 1;
}

static int append(lp_h1_t *h, const char *at, size_t len)
{
    if (h->arena_len + len > h->arena_cap) {
        /* `at` may be in the arena itself (split_absolute copies the target's query): it
         * moves with it, and the old block is gone once grow returns. */
        int inside = at >= h->arena && at < h->arena + h->arena_len;
        size_t off = inside ? (size_t)(at - h->arena) : 0;
        if (!h->grow || h->grow(h, h->arena_len + len) || h->arena_len + len > h->arena_cap)
            return -1;
        if (inside)
            at = h->arena + off;
    }
    memcpy(h->arena + h->arena_len, at, len);
    h->arena_len += len;
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    lp_h1_t *h = H1(p);
    h->arena_len = 0;
    h->nheaders = 0;
    h->header_bytes = 0;
    h->url = h->path = h->authority = h->reason = h->host = (lp_str_t){NULL, 0};
    h->flags &= LP_H1F_HEAD_REQ; /* set by the owner before parsing a response */
    h->content_length = 0;
    h->nconn_tokens = 0;
    h->in_value = 0;
    h->host_count = h->te_count = h->cl_count = 0;
    h->body_started = 0;
    return 0;
}

/* The byte k positions before `at` (1: the one just before), across execute() calls. */
static char byte_before(const lp_h1_t *h, const char *at, size_t k)
{
    if ((size_t)(at - h->chunk_base) >= k)
        return at[-(ptrdiff_t)k];
    return k - (size_t)(at - h->chunk_base) == 1 ? h->last_byte : h->last_byte2;
}

static int on_url(llhttp_t *p, const char *at, size_t len)
{
    lp_h1_t *h = H1(p);
    if (!h->url.base) {
        /* llhttp skips any run of spaces before the target; RFC 9112 3 allows exactly one. */
        if (byte_before(h, at, 2) == ' ')
            return set_error(h, 400, "malformed request line");
        h->url.base = h->arena + h->arena_len;
    }
    if (h->url.len + len > h->max_uri_size)
        return set_error(h, 414, "request target too long");
    if (append(h, at, len))
        return set_error(h, 414, "request target too long");
    h->url.len += len;
    return 0;
}

static int on_status(llhttp_t *p, const char *at, size_t len)
{
    lp_h1_t *h = H1(p);
    if (!h->reason.base)
        h->reason.base = h->arena + h->arena_len;
    if (h->reason.len + len > 512 || append(h, at, len))
        return set_error(h, 502, "status line too long");
    h->reason.len += len;
    return 0;
}

static int header_space(lp_h1_t *h, size_t len)
{
    h->header_bytes += len;
    if (h->header_bytes > h->max_header_size)
        return set_error(h, 431, "header section too large");
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t len)
{
    lp_h1_t *h = H1(p);
    if (h->in_value || h->nheaders == 0 || h->headers[h->nheaders - 1].value.base) {
        /* A new field begins. */
        if (h->nheaders >= h->max_headers)
            return set_error(h, 431, "too many header fields");
        lp_header_t *hd = &h->headers[h->nheaders++];
        hd->name = (lp_str_t){h->arena + h->arena_len, 0};
        hd->value = (lp_str_t){NULL, 0};
        h->in_value = 0;
    }
    for (size_t i = 0; i < len; i++)
        if (!lp_is_tchar((unsigned char)at[i]))
            return set_error(h, 400, "invalid character in header name");
    if (header_space(h, len) || append(h, at, len))
        return set_error(h, 431, "header section too large");
    h->headers[h->nheaders - 1].name.len += len;
    return 0;
}

static int on_header_field_complete(llhttp_t *p)
{
    lp_h1_t *h = H1(p);
    if (!h->nheaders || !h->headers[h->nheaders - 1].name.len)
        return set_error(h, 400, "empty header name");
    h->headers[h->nheaders - 1].value = (lp_str_t){h->arena + h->arena_len, 0};
    h->in_value = 1;
    h->value_started = 0;
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t len)
{
    lp_h1_t *h = H1(p);
    /* llhttp accepts obs-fold (a line starting with SP/HTAB continues the value): the
     * continuation span begins right after a line break. RFC 9112 5.2 lets a server reject
     * it; a proxy must, since peers disagree on its meaning. */
    char before = byte_before(h, at, 1);
    if (len && (before == '\n' || before == '\r'))
        return set_error(h, 400, "obsolete line folding");
    if (header_space(h, len) || append(h, at, len))
        return set_error(h, 431, "header section too large");
    h->headers[h->nheaders - 1].value.len += len;
    h->value_started = 1;
    return 0;
}

static void add_conn_tokens(lp_h1_t *h, lp_str_t v)
{
    size_t i = 0;
    while (i < v.len) {
        while (i < v.len && (v.base[i] == ' ' || v.base[i] == '\t' || v.base[i] == ','))
            i++;
        size_t start = i;
        while (i < v.len && v.base[i] != ',')
            i++;
        size_t end = i;
        while (end > start && (v.base[end - 1] == ' ' || v.base[end - 1] == '\t'))
            end--;
        if (end > start && h->nconn_tokens < LP_H1_MAX_CONN_TOKENS)
            h->conn_tokens[h->nconn_tokens++] = (lp_str_t){v.base + start, end - start};
    }
}

static int on_header_value_complete(llhttp_t *p)
{
    lp_h1_t *h = H1(p);
    lp_header_t *hd = &h->headers[h->nheaders - 1];
    while (hd->value.len &&
           (hd->value.base[hd->value.len - 1] == ' ' || hd->value.base[hd->value.len - 1] == '\t'))
        hd->value.len--;
    h->in_value = 1;
    lp_str_t n = hd->name;
    if (LP_STR_IEQ(n, "host")) {
        h->host_count++;
        h->host = hd->value;
    } else if (LP_STR_IEQ(n, "transfer-encoding")) {
        h->te_count++;
        if (!LP_STR_IEQ(hd->value, "chunked"))
            return set_error(h, p->type == HTTP_REQUEST ? 400 : 502,
                             "transfer coding other than chunked");
    } else if (LP_STR_IEQ(n, "content-length")) {
        h->cl_count++;
    } else if (LP_STR_IEQ(n, "connection")) {
        add_conn_tokens(h, hd->value);
    }
    return 0;
}

/* The bytes of a Host (or an absolute target's authority) before its port, by class: a
 * table, not a search per byte, since every request's Host is checked. HOST_REG: reg-name
 * (RFC 3986 3.2.2): ALPHA, DIGIT, -._~ (unreserved), !$&'()*+,;= (sub-delims) and % (pct-
 * encoded's). HOST_IP: an IP literal's, between its brackets: the tchars but | and `, with
 * : and [ (lenient: its grammar is not checked). */
enum { HOST_REG = 1, HOST_IP = 2 };
static const uint8_t host_class[256] = {
    ['0' ... '9'] = HOST_REG | HOST_IP,
    ['a' ... 'z'] = HOST_REG | HOST_IP,
    ['A' ... 'Z'] = HOST_REG | HOST_IP,
    ['-'] = HOST_REG | HOST_IP,
    ['.'] = HOST_REG | HOST_IP,
    ['_'] = HOST_REG | HOST_IP,
    ['~'] = HOST_REG | HOST_IP,
    ['!'] = HOST_REG | HOST_IP,
    ['$'] = HOST_REG | HOST_IP,
    ['%'] = HOST_REG | HOST_IP,
    ['&'] = HOST_REG | HOST_IP,
    ['\''] = HOST_REG | HOST_IP,
    ['*'] = HOST_REG | HOST_IP,
    ['+'] = HOST_REG | HOST_IP,
    ['('] = HOST_REG,
    [')'] = HOST_REG,
    [','] = HOST_REG,
    [';'] = HOST_REG,
    ['='] = HOST_REG,
    ['#'] = HOST_IP,
    ['^'] = HOST_IP,
    [':'] = HOST_IP,
    ['['] = HOST_IP,
};

/* One pass: the host (reg-name, or an IP literal in brackets), then nothing or ':' and
 * digits (maybe none: RFC 3986's port is *DIGIT). An empty value passes. */
static int valid_host(lp_str_t v)
{
    const unsigned char *p = (const unsigned char *)v.base;
    size_t i = 0, n = v.len;
    if (n && p[0] == '[') {
        while (i < n && p[i] != ']') {
            if (!(host_class[p[i]] & HOST_IP))
                return 0;
            i++;
        }
        if (i == n)
            return 0;
        i++;
    } else {
        while (i < n && (host_class[p[i]] & HOST_REG))
            i++;
    }
    if (i < n && p[i++] != ':') /* (':' is no reg-name byte: the port's separator) */
        return 0;
    for (; i < n; i++)
        if ((unsigned)(p[i] - '0') > 9)
            return 0;
    return 1;
}

/* Splits an absolute-form target "http://authority/path?q" (RFC 9112 3.2.2). */
static int split_absolute(lp_h1_t *h)
{
    lp_str_t u = h->url;
    size_t skip;
    if (u.len >= 7 && lp_str_ieq((lp_str_t){u.base, 7}, "http://", 7))
        skip = 7;
    else if (u.len >= 8 && lp_str_ieq((lp_str_t){u.base, 8}, "https://", 8))
        skip = 8;
    else
        return -1;
    size_t i = skip;
    while (i < u.len && u.base[i] != '/' && u.base[i] != '?')
        i++;
    h->authority = (lp_str_t){u.base + skip, i - skip};
    if (!h->authority.len || memchr(h->authority.base, '@', h->authority.len))
        return -1;
    if (i == u.len) {
        h->path = LP_STR("/");
    } else if (u.base[i] == '?') {
        /* "/" + "?query": rebuilt in the arena so the path stays one slice. */
        size_t start = h->arena_len, off = i;
        if (append(h, "/", 1) || append(h, h->url.base + off, h->url.len - off))
            return -1; /* (the arena may have moved: offsets, not pointers) */
        h->path = (lp_str_t){h->arena + start, h->url.len - off + 1};
    } else {
        h->path = (lp_str_t){u.base + i, u.len - i};
    }
    h->flags |= LP_H1F_ABSOLUTE;
    return 0;
}

/* The normalised path goes into the arena beside the target, which stays as sent (the access
 * log's $request); the common path needs the scan only. */
static int normalize_path(lp_h1_t *h)
{
    if (!h->path_norm || h->path.base[0] != '/' ||
        !lp_path_needs_norm(h->path.base, h->path.len, h->path_norm))
        return 0;
    size_t len = h->path.len, start = h->arena_len;
    if (append(h, h->path.base, len)) /* the path is in the arena (on_url): append follows it */
        return set_error(h, 414, "request target too long");
    long n = lp_path_normalize(h->arena + start, len, h->path_norm);
    if (n == LP_PATHN_ABOVE_ROOT)
        return set_error(h, 400, "request path climbs above the root");
    if (n < 0)
        return set_error(h, 400, "invalid percent-encoding in request path");
    h->arena_len = start + (size_t)n;
    h->path = (lp_str_t){h->arena + start, (size_t)n};
    return 0;
}

static int request_head_checks(lp_h1_t *h, llhttp_t *p)
{
    if (p->http_major != 1 || p->http_minor > 1)
        return set_error(h, 505, "unsupported HTTP version");
    if (p->method == HTTP_CONNECT)
        return set_error(h, 405, "CONNECT is not supported");
    if (!h->url.len)
        return set_error(h, 400, "empty request target");
    if (h->url.base[0] == '/') {
        h->path = h->url;
    } else if (h->url.len == 1 && h->url.base[0] == '*') {
        if (p->method != HTTP_OPTIONS)
            return set_error(h, 400, "asterisk-form is only for OPTIONS");
        h->path = h->url;
    } else if (split_absolute(h)) {
        return set_error(h, 400, "invalid request target");
    }
    int nerr = normalize_path(h);
    if (nerr)
        return nerr;
    if (h->host_count > 1)
        return set_error(h, 400, "several Host header fields");
    if (h->host_count == 0 && p->http_minor == 1 && !(h->flags & LP_H1F_ABSOLUTE))
        return set_error(h, 400, "HTTP/1.1 request without Host");
    if (h->host_count && !valid_host(h->host))
        return set_error(h, 400, "invalid Host");
    if (h->flags & LP_H1F_ABSOLUTE) {
        if (!valid_host(h->authority))
            return set_error(h, 400, "invalid authority in request target");
        h->host = h->authority; /* RFC 9112 3.2.2: the target's authority wins over Host */
    }
    if (h->te_count && p->http_minor == 0)
        return set_error(h, 400, "Transfer-Encoding in an HTTP/1.0 request");
    const lp_header_t *e = lp_h1_find(h, "expect", 6);
    if (e && p->http_minor == 1) {
        if (!LP_STR_IEQ(e->value, "100-continue"))
            return set_error(h, 417, "unsupported expectation");
        h->flags |= LP_H1F_EXPECT_100;
    }
    if (p->upgrade && p->method != HTTP_CONNECT)
        h->flags |= LP_H1F_UPGRADE;
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    lp_h1_t *h = H1(p);
    if (h->te_count > 1)
        return set_error(h, p->type == HTTP_REQUEST ? 400 : 502, "several Transfer-Encoding");
    if (h->te_count && h->cl_count)
        return set_error(h, p->type == HTTP_REQUEST ? 400 : 502,
                         "both Content-Length and Transfer-Encoding");
    /* Our check (on_header_value_complete) reads the value without its OWS, as RFC 9110 5.5
     * says; llhttp 8 does not take "chunked" with a trailing tab as chunked and would read
     * the body to the connection's close. The two readings must agree. */
    if (h->te_count && !(p->flags & F_CHUNKED))
        return set_error(h, p->type == HTTP_REQUEST ? 400 : 502,
                         "Transfer-Encoding the parser did not read as chunked");
    if (p->flags & F_CHUNKED)
        h->flags |= LP_H1F_CHUNKED;
    if (p->flags & F_CONTENT_LENGTH) {
        h->flags |= LP_H1F_LENGTH;
        h->content_length = p->content_length;
    }
    for (unsigned i = 0; i < h->nconn_tokens; i++) {
        if (LP_STR_IEQ(h->conn_tokens[i], "close"))
            h->flags |= LP_H1F_CONN_CLOSE;
        else if (LP_STR_IEQ(h->conn_tokens[i], "keep-alive"))
            h->flags |= LP_H1F_KEEPALIVE_10;
    }
    if (p->http_major == 1 && p->http_minor == 0 && !(h->flags & LP_H1F_KEEPALIVE_10))
        h->flags |= LP_H1F_CONN_CLOSE;
    if (p->type == HTTP_REQUEST) {
        if (request_head_checks(h, p))
            return HPE_USER;
    } else {
        int st = p->status_code;
        if (st < 100 || st > 999)
            return set_error(h, 502, "invalid status code");
        if (p->http_major != 1)
            return set_error(h, 502, "invalid upstream HTTP version");
        if (st == 101 && !p->upgrade) {
            /* llhttp ends HTTP at any 101, so it cannot be skipped as an interim response. */
            return set_error(h, 502, "101 without Connection: upgrade");
        } else if (st == 101) {
            h->flags |= LP_H1F_UPGRADE;
        } else if (st < 200) {
            /* Interim responses (100, 103) are consumed here, never relayed. */
            p->flags |= F_SKIPBODY;
            return 0;
        }
        if ((h->flags & LP_H1F_HEAD_REQ) || st == 204 || st == 304) {
            p->flags |= F_SKIPBODY;
        } else if (llhttp_message_needs_eof(p)) {
            h->flags |= LP_H1F_EOF_BODY;
        }
    }
    return HPE_PAUSED;
}

static int on_body(llhttp_t *p, const char *at, size_t len)
{
    lp_h1_t *h = H1(p);
    h->body_started = 1;
    int rc = h->on_body ? h->on_body(h, at, len) : 0;
    if (rc == LP_H1_CB_PAUSE) {
        h->body_paused = 1;
        return HPE_PAUSED;
    }
    if (rc) {
        if (!h->err_status) {
            h->err_status = h->parser.type == HTTP_REQUEST ? 400 : 502;
            h->err_reason = "body handler failed";
        }
        return HPE_USER;
    }
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    lp_h1_t *h = H1(p);
    if (p->type == HTTP_RESPONSE && p->status_code < 200 && p->status_code != 101)
        return 0; /* an interim response: keep parsing for the final one */
    if (p->upgrade)
        return 0; /* llhttp stops with HPE_PAUSED_UPGRADE */
    LP_UNUSED(h);
    return HPE_PAUSED;
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_status = on_status,
    .on_header_field = on_header_field,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_value,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

void lp_h1_init(lp_h1_t *h, llhttp_type_t type, void *ud, lp_h1_body_cb on_body_cb)
{
    memset(h, 0, sizeof(*h));
    llhttp_init(&h->parser, type, &settings);
    h->parser.data = h;
    h->ud = ud;
    h->on_body = on_body_cb;
    h->max_header_size = 16384;
    h->max_uri_size = 8192;
}

void lp_h1_set_storage(lp_h1_t *h, char *arena, size_t cap, lp_header_t *headers,
                       unsigned max_headers)
{
    h->arena = arena;
    h->arena_cap = cap;
    h->arena_len = 0;
    h->headers = headers;
    h->max_headers = max_headers;
    h->nheaders = 0;
}

/* llhttp accepts a bare LF as a line end and runs of spaces in the request line; peers
 * that disagree on those are how requests get smuggled, so the head bytes are checked
 * here: every LF must follow a CR, and a request line has exactly two spaces. */
static int scan_head(lp_h1_t *h, const char *data, size_t n)
{
    size_t i = 0;
    /* The start line byte by byte (its spaces are counted), up to its LF. */
    for (; i < n && h->scan_state < 2; i++) {
        char c = data[i];
        if (c == '\n') {
            char prev = i ? data[i - 1] : h->last_byte;
            if (prev != '\r')
                return set_error(h, h->parser.type == HTTP_REQUEST ? 400 : 502,
                                 "bare LF in the message head");
            if (h->scan_state == 1) {
                if (h->parser.type == HTTP_REQUEST && h->rl_spaces != 2)
                    return set_error(h, 400, "malformed request line");
                h->scan_state = 2;
            }
        } else if (h->scan_state == 0 && c != '\r') {
            h->scan_state = 1; /* empty lines before the request line are allowed */
            h->rl_spaces = 0;
        }
        if (h->scan_state == 1 && (c == ' ' || c == '\t'))
            h->rl_spaces += c == ' ' ? 1 : 100;
    }
    /* The fields: only bare LFs are looked for, from one LF to the next (memchr, not a
     * branch per byte: this ran over every head, both ways). */
    while (i < n) {
        const char *lf = memchr(data + i, '\n', n - i);
        if (!lf)
            break;
        size_t j = (size_t)(lf - data);
        if ((j ? data[j - 1] : h->last_byte) != '\r')
            return set_error(h, h->parser.type == HTTP_REQUEST ? 400 : 502,
                             "bare LF in the message head");
        i = j + 1;
    }
    return 0;
}

lp_h1_event_t lp_h1_execute(lp_h1_t *h, const char *data, size_t len, size_t *consumed)
{
    int in_head = h->scan_state < 3;
    h->chunk_base = data;
    h->after_head = 0;
    llhttp_errno_t e = llhttp_execute(&h->parser, data, len);
    size_t used = len;
    lp_h1_event_t ev;
    switch (e) {
    case HPE_OK:
        ev = LP_H1_NEED_MORE;
        break;
    case HPE_PAUSED:
        used = (size_t)(llhttp_get_error_pos(&h->parser) - data);
        if (h->body_paused) {
            /* The message may complete without more input (the pause came on its last
             * span): the caller runs the parser again even with none. */
            h->body_paused = 0;
            h->after_head = 1;
            ev = LP_H1_PAUSED;
            break;
        }
        /* Paused at the end of the head, or at the end of the message. */
        ev = strcmp(llhttp_get_error_reason(&h->parser), "Paused by on_headers_complete") == 0
                 ? LP_H1_HEAD
                 : LP_H1_DONE;
        h->after_head = ev == LP_H1_HEAD;
        break;
    case HPE_PAUSED_UPGRADE:
        used = (size_t)(llhttp_get_error_pos(&h->parser) - data);
        ev = LP_H1_UPGRADE;
        break;
    default:
        used = 0;
        if (!h->err_status) {
            h->err_status = h->parser.type == HTTP_REQUEST ? 400 : 502;
            h->err_reason = llhttp_get_error_reason(&h->parser);
        }
        ev = LP_H1_ERROR;
        break;
    }
    if (in_head && ev != LP_H1_ERROR && scan_head(h, data, used)) {
        ev = LP_H1_ERROR;
        used = 0;
    }
    if (ev == LP_H1_HEAD)
        h->scan_state = 3; /* the body is not scanned */
    else if (ev == LP_H1_DONE)
        h->scan_state = 0; /* a next message on this parser starts with its head */
    if (used >= 2) {
        h->last_byte2 = data[used - 2];
        h->last_byte = data[used - 1];
    } else if (used == 1) {
        h->last_byte2 = h->last_byte;
        h->last_byte = data[0];
    }
    *consumed = used;
    return ev;
}

/* ---- a response head given as fields (HTTP/2) ---- */

static int refuse(lp_h1_t *h, int status, const char *reason)
{
    set_error(h, status, reason);
    return -1;
}

void lp_h1_fields_begin(lp_h1_t *h)
{
    on_message_begin(&h->parser);
    h->err_status = 0;
    h->err_reason = NULL;
}

int lp_h1_field(lp_h1_t *h, const char *name, size_t nlen, const char *value, size_t vlen)
{
    /* The value without surrounding whitespace, as a parsed field's (llhttp skips the
     * leading, on_header_value_complete trims the trailing). */
    while (vlen && (value[0] == ' ' || value[0] == '\t')) {
        value++;
        vlen--;
    }
    while (vlen && (value[vlen - 1] == ' ' || value[vlen - 1] == '\t'))
        vlen--;
    if (h->nheaders >= h->max_headers)
        return refuse(h, 431, "too many header fields");
    if (!nlen)
        return refuse(h, 400, "empty header name");
    if (header_space(h, nlen + vlen))
        return -1; /* (431, as parsed) */
    size_t at = h->arena_len;
    if (append(h, name, nlen) || append(h, value, vlen))
        return refuse(h, 431, "header section too large");
    lp_header_t *hd = &h->headers[h->nheaders++];
    hd->name = (lp_str_t){h->arena + at, nlen};
    hd->value = (lp_str_t){h->arena + at + nlen, vlen};
    if (nlen == 14 && lp_str_ieq(hd->name, "content-length", 14)) {
        /* Digits only, once: as llhttp refuses a bad or a second Content-Length. */
        uint64_t v = 0;
        for (size_t i = 0; i < vlen; i++) {
            if (value[i] < '0' || value[i] > '9' || v > (UINT64_MAX - 9) / 10)
                return refuse(h, 502, "invalid Content-Length");
            v = v * 10 + (uint64_t)(value[i] - '0');
        }
        if (!vlen || h->cl_count++)
            return refuse(h, 502, "invalid Content-Length");
        h->flags |= LP_H1F_LENGTH;
        h->content_length = v;
    }
    return 0;
}

int lp_h1_fields_end(lp_h1_t *h, int status)
{
    if (status < 200 || status > 999)
        return refuse(h, 502, "invalid status code");
    h->parser.status_code = (uint16_t)status;
    if (!(h->flags & (LP_H1F_HEAD_REQ | LP_H1F_LENGTH)) && status != 204 && status != 304)
        h->flags |= LP_H1F_EOF_BODY;
    return 0;
}

void lp_str_rebase(lp_str_t *s, const char *from, size_t len, const char *to)
{
    if (s->base && s->base >= from && s->base <= from + len)
        s->base = to + (s->base - from);
}

void lp_h1_rebase(lp_h1_t *h, char *arena, size_t cap)
{
    const char *old = h->arena;
    size_t len = h->arena_len;
    memcpy(arena, old, len);
    lp_str_rebase(&h->url, old, len, arena);
    lp_str_rebase(&h->path, old, len, arena);
    lp_str_rebase(&h->authority, old, len, arena);
    lp_str_rebase(&h->reason, old, len, arena);
    lp_str_rebase(&h->host, old, len, arena);
    for (unsigned i = 0; i < h->nconn_tokens; i++)
        lp_str_rebase(&h->conn_tokens[i], old, len, arena);
    for (unsigned i = 0; i < h->nheaders; i++) {
        lp_str_rebase(&h->headers[i].name, old, len, arena);
        lp_str_rebase(&h->headers[i].value, old, len, arena);
    }
    h->arena = arena;
    h->arena_cap = cap;
}

void lp_h1_resume(lp_h1_t *h)
{
    llhttp_resume(&h->parser);
}

lp_h1_event_t lp_h1_finish(lp_h1_t *h)
{
    llhttp_errno_t e = llhttp_finish(&h->parser);
    if (e == HPE_OK || e == HPE_PAUSED)
        return LP_H1_DONE;
    if (!h->err_status) {
        h->err_status = 502;
        h->err_reason = "connection closed before the message was complete";
    }
    return LP_H1_ERROR;
}

const lp_header_t *lp_h1_find(const lp_h1_t *h, const char *name, size_t len)
{
    for (unsigned i = 0; i < h->nheaders; i++)
        if (lp_str_ieq(h->headers[i].name, name, len))
            return &h->headers[i];
    return NULL;
}

static inline uint64_t word_at(const char *p)
{
    uint64_t w;
    memcpy(&w, p, 8);
    return w;
}

/* Whether the n bytes at s are lit (n bytes of lower-case letters, digits and '-') in any
 * case: eight bytes at a time, the last word overlapping the one before, or byte by byte
 * under eight. Bit 6 (0x40) is set in a letter and clear in a digit or '-': shifted to bit
 * 5, the case bit, and OR-ed into s's byte where lit has a letter, it folds 'A'-'Z' (and
 * only those) onto 'a'-'z'; elsewhere the bytes must be equal (a CR is no '-'). */
static inline int lower_name_eq(const char *s, const char *lit, size_t n)
{
    if (n < 8) {
        for (size_t i = 0; i < n; i++) {
            unsigned char l = (unsigned char)lit[i];
            if (((unsigned char)s[i] | ((l & 0x40) >> 1)) != l)
                return 0;
        }
        return 1;
    }
    const uint64_t bit6 = 0x4040404040404040ULL;
    uint64_t diff = 0, l;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        l = word_at(lit + i);
        diff |= (word_at(s + i) | ((l & bit6) >> 1)) ^ l;
    }
    if (i < n) {
        l = word_at(lit + n - 8);
        diff |= (word_at(s + n - 8) | ((l & bit6) >> 1)) ^ l;
    }
    return diff == 0;
}
#define NAME_IS(s, lit) lower_name_eq((s), (lit), sizeof(lit) - 1)

int lp_h1_is_hop_by_hop(const lp_h1_t *h, lp_str_t n)
{
    /* RFC 9110 7.6.1's set, Proxy-Connection, and the framing fields the proxy writes itself
     * (Content-Length, Transfer-Encoding), on every field of every message: told apart by
     * length (and a first letter), then one compare. */
    const char *s = n.base;
    int hop = 0;
    switch (n.len) {
    case 2:
        hop = NAME_IS(s, "te");
        break;
    case 7:
        hop = (s[0] | 0x20) == 't' ? NAME_IS(s, "trailer") : NAME_IS(s, "upgrade");
        break;
    case 10:
        hop = (s[0] | 0x20) == 'c' ? NAME_IS(s, "connection") : NAME_IS(s, "keep-alive");
        break;
    case 14:
        hop = NAME_IS(s, "content-length");
        break;
    case 16:
        hop = NAME_IS(s, "proxy-connection");
        break;
    case 17:
        hop = NAME_IS(s, "transfer-encoding");
        break;
    }
    if (hop)
        return 1;
    for (unsigned i = 0; i < h->nconn_tokens; i++)
        if (lp_str_ieq(n, h->conn_tokens[i].base, h->conn_tokens[i].len))
            return 1;
    return 0;
}

uint8_t lp_h1_method(const lp_h1_t *h)
{
    return h->parser.method;
}

int lp_h1_status(const lp_h1_t *h)
{
    return h->parser.status_code;
}

int lp_h1_minor(const lp_h1_t *h)
{
    return h->parser.http_minor;
}

const char *lp_h1_status_text(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 101:
        return "Switching Protocols";
    case 103:
        return "Early Hints";
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
    case 402:
        return "Payment Required";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 406:
        return "Not Acceptable";
    case 407:
        return "Proxy Authentication Required";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 410:
        return "Gone";
    case 411:
        return "Length Required";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 414:
        return "URI Too Long";
    case 415:
        return "Unsupported Media Type";
    case 416:
        return "Range Not Satisfiable";
    case 417:
        return "Expectation Failed";
    case 421:
        return "Misdirected Request";
    case 422:
        return "Unprocessable Content";
    case 425:
        return "Too Early";
    case 426:
        return "Upgrade Required";
    case 428:
        return "Precondition Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 451:
        return "Unavailable For Legal Reasons";
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
    case 505:
        return "HTTP Version Not Supported";
    }
    return "Unknown";
}

lp_str_t lp_kv_find(lp_str_t s, char sep, const char *name, size_t nlen)
{
    size_t i = 0;
    while (i < s.len) {
        while (i < s.len && (s.base[i] == ' ' || s.base[i] == '\t'))
            i++;
        size_t start = i;
        while (i < s.len && s.base[i] != sep)
            i++;
        const char *eq = memchr(s.base + start, '=', i - start);
        if (eq && (size_t)(eq - (s.base + start)) == nlen &&
            memcmp(s.base + start, name, nlen) == 0) {
            size_t vstart = (size_t)(eq + 1 - s.base), vend = i;
            while (vend > vstart && (s.base[vend - 1] == ' ' || s.base[vend - 1] == '\t'))
                vend--;
            return (lp_str_t){s.base + vstart, vend - vstart};
        }
        i++;
    }
    return (lp_str_t){NULL, 0};
}

void lp_wbuf_str(lp_wbuf_t *w, const char *s, size_t n)
{
    if (w->overflow || (size_t)(w->end - w->p) < n) {
        w->overflow = 1;
        return;
    }
    memcpy(w->p, s, n);
    w->p += n;
}

void lp_wbuf_cstr(lp_wbuf_t *w, const char *s)
{
    lp_wbuf_str(w, s, strlen(s));
}

void lp_wbuf_u64(lp_wbuf_t *w, uint64_t v)
{
    char tmp[24];
    lp_wbuf_str(w, tmp, lp_u64_to_str(v, 10, tmp));
}

size_t lp_u64_to_str(uint64_t v, unsigned base, char *out)
{
    char tmp[24];
    size_t n = 0;
    do {
        unsigned d = (unsigned)(v % base);
        tmp[n++] = (char)(d < 10 ? '0' + d : 'a' + d - 10);
        v /= base;
    } while (v);
    for (size_t i = 0; i < n; i++)
        out[i] = tmp[n - 1 - i];
    return n;
}

void lp_wbuf_header(lp_wbuf_t *w, const char *name, size_t nlen, const char *val, size_t vlen)
{
    lp_wbuf_str(w, name, nlen);
    lp_wbuf_str(w, ": ", 2);
    lp_wbuf_str(w, val, vlen);
    lp_wbuf_str(w, "\r\n", 2);
}

const char *lp_h1_date(void)
{
    static _Thread_local time_t last;
    static _Thread_local char text[40];
    time_t now = time(NULL);
    if (now != last || !text[0]) {
        /* By hand: strftime's %a and %b follow the locale, HTTP dates do not. */
        static const char days[7][4] = {"Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"};
        static const char months[12][4] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                           "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
        struct tm tm;
        gmtime_r(&now, &tm);
        snprintf(text, sizeof(text), "%s, %02d %s %04d %02d:%02d:%02d GMT", days[tm.tm_wday % 7],
                 tm.tm_mday, months[tm.tm_mon % 12], tm.tm_year + 1900, tm.tm_hour, tm.tm_min,
                 tm.tm_sec);
        last = now;
    }
    return text;
}

size_t lp_h1_response_head(char *out, size_t cap, const lp_h1_resp_head_t *h)
{
    /* A head that carries its own Date (an upstream's, a cached response's) keeps it; a
     * cached response keeps its Server too, and gets none when it had none (the miss that
     * stored it went out without one). */
    int has_date = 0, has_server = 0;
    for (unsigned i = 0; i < h->nheaders; i++) {
        has_date |= LP_STR_IEQ(h->headers[i].name, "date");
        has_server |= h->local && LP_STR_IEQ(h->headers[i].name, "server");
    }
    lp_wbuf_t w = {out, out + cap, 0};
    lp_wbuf_cstr(&w, "HTTP/1.1 ");
    lp_wbuf_u64(&w, (uint64_t)h->status);
    lp_wbuf_cstr(&w, " ");
    if (h->reason.base)
        lp_wbuf_str(&w, h->reason.base, h->reason.len);
    else
        lp_wbuf_cstr(&w, lp_h1_status_text(h->status));
    lp_wbuf_cstr(&w, "\r\n");
    if (h->local && !has_server && !h->stored)
        lp_wbuf_cstr(&w, "Server: luaproxy\r\n");
    if (!has_date) {
        lp_wbuf_cstr(&w, "Date: ");
        lp_wbuf_cstr(&w, lp_h1_date());
        lp_wbuf_cstr(&w, "\r\n");
    }
    for (unsigned i = 0; i < h->nheaders; i++) {
        const lp_header_t *hd = &h->headers[i];
        lp_wbuf_header(&w, hd->name.base, hd->name.len, hd->value.base, hd->value.len);
    }
    if (h->upgrade) {
        lp_wbuf_cstr(&w, "Connection: upgrade\r\n");
        if (h->upgrade_proto.base)
            lp_wbuf_header(&w, "Upgrade", 7, h->upgrade_proto.base, h->upgrade_proto.len);
    } else if (h->chunked) {
        lp_wbuf_cstr(&w, "Transfer-Encoding: chunked\r\n");
    } else if (h->has_length) {
        lp_wbuf_cstr(&w, "Content-Length: ");
        lp_wbuf_u64(&w, h->length);
        lp_wbuf_cstr(&w, "\r\n");
    }
    if (!h->upgrade) {
        if (h->close)
            lp_wbuf_cstr(&w, "Connection: close\r\n");
        else if (h->http10)
            lp_wbuf_cstr(&w, "Connection: keep-alive\r\n");
    }
    lp_wbuf_cstr(&w, "\r\n");
    return w.overflow ? 0 : (size_t)(w.p - out);
}
