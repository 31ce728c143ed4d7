/* Shared nghttp2 helpers (h2_util.h). */
#include <stdlib.h>
#include <string.h>
#include "h2_util.h"
#include "common.h"
#include "proxy-t.h"

size_t lp_h2_fill(nghttp2_session *s, lp_endpoint_t *ep, uint8_t *fatal)
{
    lp_buf_t *b = NULL;
    size_t used = 0, made = 0;
    while (!(ep->flags & LP_EPF_CLOSING) && lp_ep_queued(ep) + used < LP_HIGH_WATERMARK) {
        const uint8_t *data;
        ssize_t n = nghttp2_session_mem_send(s, &data);
        if (n < 0) {
            *fatal = 1;
            break;
        }
        if (n == 0)
            break;
        if (b && used + (size_t)n > b->cap) {
            lp_wbatch_t *wb = lp_ep_outb(ep, 1, 0);
            if (wb)
                lp_wbatch_add(wb, b->data, used, b);
            else
                *fatal = 1;
            lp_buf_unref(b);
            b = NULL;
        }
        if (!b) {
            used = 0;
            if (!(b = lp_buf_get(ep->env->bufs,
                                 (size_t)n > LP_BUF_SIZE ? (size_t)n : LP_BUF_SIZE))) {
                *fatal = 1;
                break;
            }
        }
        memcpy(b->data + used, data, (size_t)n);
        used += (size_t)n;
        made += (size_t)n;
    }
    if (b) {
        lp_wbatch_t *wb = used ? lp_ep_outb(ep, 1, 0) : NULL;
        if (wb)
            lp_wbatch_add(wb, b->data, used, b);
        else if (used)
            *fatal = 1;
        lp_buf_unref(b);
    }
    return made;
}

void lp_h2_nvs_add(lp_h2_nvs_t *l, const char *name, size_t nlen, const char *value, size_t vlen)
{
    if (l->oom || lp_grow((void **)&l->nv, &l->cap, l->n + 1, sizeof(*l->nv), 16) ||
        lp_grow((void **)&l->mem, &l->mcap, l->mlen + nlen + vlen, 1, 16)) {
        l->oom = 1;
        return;
    }
    char *m = l->mem + l->mlen;
    for (size_t j = 0; j < nlen; j++) {
        char ch = name[j];
        m[j] = ch >= 'A' && ch <= 'Z' ? (char)(ch + 32) : ch;
    }
    memcpy(m + nlen, value, vlen);
    /* Offsets for now: mem may move until the list is done. */
    l->nv[l->n++] =
        (nghttp2_nv){(uint8_t *)(uintptr_t)l->mlen, (uint8_t *)(uintptr_t)(l->mlen + nlen), nlen,
                     vlen, NGHTTP2_NV_FLAG_NONE};
    l->mlen += nlen + vlen;
}

void lp_h2_nvs_reserve(lp_h2_nvs_t *l, size_t n, size_t bytes)
{
    if (l->oom || lp_grow((void **)&l->nv, &l->cap, l->n + n, sizeof(*l->nv), 16) ||
        lp_grow((void **)&l->mem, &l->mcap, l->mlen + bytes, 1, 16))
        l->oom = 1;
}

int lp_h2_conn_specific(const char *name, size_t nlen, const char *value, size_t vlen)
{
    static const char *const drop[] = {"connection", "keep-alive", "proxy-connection",
                                       "transfer-encoding", "upgrade"};
    lp_str_t n = {name, nlen};
    for (size_t i = 0; i < LP_ARRAY_LEN(drop); i++)
        if (lp_str_ieq(n, drop[i], strlen(drop[i])))
            return 1;
    return lp_str_ieq(n, "te", 2) && !lp_str_ieq((lp_str_t){value, vlen}, "trailers", 8);
}

int lp_h2_trailer_forbidden(const char *name, size_t nlen)
{
    /* RFC 9110 6.5.1: a trailer must not carry framing, routing, authentication, cookies or
     * content description; nor what the proxy itself sets in the head (forwarding, tracing):
     * a peer merging trailers into the head would otherwise take them for the proxy's. */
    static const char *const no[] = {"content-length",
                                     "transfer-encoding",
                                     "host",
                                     "te",
                                     "trailer",
                                     "connection",
                                     "keep-alive",
                                     "proxy-connection",
                                     "upgrade",
                                     "authorization",
                                     "proxy-authorization",
                                     "cookie",
                                     "set-cookie",
                                     "content-encoding",
                                     "content-type",
                                     "content-range",
                                     "expect",
                                     "range",
                                     "forwarded",
                                     "x-forwarded-for",
                                     "x-forwarded-proto",
                                     "x-forwarded-host",
                                     "x-forwarded-port",
                                     "x-real-ip",
                                     "traceparent",
                                     "tracestate",
                                     "via"};
    lp_str_t n = {name, nlen};
    for (size_t i = 0; i < LP_ARRAY_LEN(no); i++)
        if (lp_str_ieq(n, no[i], strlen(no[i])))
            return 1;
    return nlen >= 3 && lp_str_ieq((lp_str_t){name, 3}, "if-", 3);
}

void lp_h2_nvs_add_text(lp_h2_nvs_t *l, const char *text, size_t len)
{
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        const char *le = eol ? eol : end;
        const char *colon = memchr(p, ':', (size_t)(le - p));
        if (colon && colon > p) {
            const char *v = colon + 1, *ve = le;
            while (v < ve && (*v == ' ' || *v == '\t'))
                v++;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t'))
                ve--;
            if (!lp_h2_conn_specific(p, (size_t)(colon - p), v, (size_t)(ve - v)))
                lp_h2_nvs_add(l, p, (size_t)(colon - p), v, (size_t)(ve - v));
        }
        p = eol ? eol + 1 : end;
    }
}

nghttp2_nv *lp_h2_nvs_done(lp_h2_nvs_t *l)
{
    if (l->oom)
        return NULL;
    for (size_t i = 0; i < l->n; i++) {
        l->nv[i].name = (uint8_t *)l->mem + (uintptr_t)l->nv[i].name;
        l->nv[i].value = (uint8_t *)l->mem + (uintptr_t)l->nv[i].value;
    }
    return l->nv ? l->nv : (nghttp2_nv *)(uintptr_t) "";
}

void lp_h2_nvs_free(lp_h2_nvs_t *l)
{
    free(l->nv);
    free(l->mem);
    memset(l, 0, sizeof(*l));
}

int lp_h2_text_add(char **text, size_t *len, const char *name, size_t nlen, const char *value,
                   size_t vlen)
{
    char *n = realloc(*text, *len + nlen + vlen + 5);
    if (!n)
        return -1;
    memcpy(n + *len, name, nlen);
    memcpy(n + *len + nlen, ": ", 2);
    memcpy(n + *len + nlen + 2, value, vlen);
    memcpy(n + *len + nlen + 2 + vlen, "\r\n", 3);
    *len += nlen + vlen + 4;
    *text = n;
    return 0;
}
