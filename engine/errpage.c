/* Custom error pages: engine/errpage.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "common.h"
#include "errpage.h"
#include "http1.h"

static const lp_error_page_t *pages_find(const lp_error_pages_t *e, int status)
{
    for (size_t i = 0; i < e->npages; i++)
        if (e->pages[i].status == status)
            return &e->pages[i];
    return NULL;
}

const lp_error_page_t *lp_errpage_find(const lp_config_t *c, const lp_route_conf_t *r, int status)
{
    const lp_error_page_t *p = r ? pages_find(&r->error_pages, status) : NULL;
    if (!p)
        p = pages_find(&c->error_pages, status);
    return p && !p->builtin ? p : NULL;
}

static const char *const NAMES[3] = {"status", "reason", "detail"};

static int is_name_start(char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || ch == '_';
}

static int is_name_char(char ch)
{
    return is_name_start(ch) || (ch >= '0' && ch <= '9');
}

static int var_index(const char *name, size_t n)
{
    for (int k = 0; k < 3; k++)
        if (strlen(NAMES[k]) == n && memcmp(NAMES[k], name, n) == 0)
            return k;
    return -1;
}

static void emit(char *out, size_t *o, const char *s, size_t n)
{
    if (out)
        memcpy(out + *o, s, n);
    *o += n;
}

size_t lp_errpage_template(const char *t, size_t n, const char *const vals[3], char *out)
{
    size_t o = 0, i = 0;
    while (i < n) {
        const char *d = memchr(t + i, '$', n - i);
        size_t lit = d ? (size_t)(d - t) - i : n - i;
        emit(out, &o, t + i, lit);
        i += lit;
        if (!d)
            break;
        /* t[i] is '$': "$$", "${name}", "$name", or a '$' as written. */
        if (i + 1 < n && t[i + 1] == '$') {
            emit(out, &o, "$", 1);
            i += 2;
            continue;
        }
        const char *name = NULL;
        size_t nlen = 0, stop = 0;
        if (i + 1 < n && t[i + 1] == '{') {
            const char *close = memchr(t + i + 2, '}', n - i - 2);
            if (close) {
                name = t + i + 2;
                nlen = (size_t)(close - name);
                stop = (size_t)(close - t) + 1;
            }
        } else if (i + 1 < n && is_name_start(t[i + 1])) {
            size_t j = i + 1;
            while (j < n && is_name_char(t[j]))
                j++;
            name = t + i + 1;
            nlen = j - i - 1;
            stop = j;
        }
        int k = name ? var_index(name, nlen) : -1;
        if (k < 0) {
            emit(out, &o, "$", 1);
            i++;
            continue;
        }
        emit(out, &o, vals[k], strlen(vals[k]));
        i = stop;
    }
    return o;
}

int lp_errpage_render(const lp_error_page_t *p, int status, const char *detail, char **body,
                      size_t *len)
{
    *body = NULL;
    *len = 0;
    char code[16];
    snprintf(code, sizeof(code), "%d", status);
    const char *const vals[3] = {code, lp_h1_status_text(status), detail ? detail : ""};
    size_t n = p->has_vars ? lp_errpage_template(p->body, p->body_len, vals, NULL) : p->body_len;
    if (!n)
        return 0;
    if (!(*body = malloc(n)))
        return LP_ENOMEM;
    if (p->has_vars)
        lp_errpage_template(p->body, p->body_len, vals, *body);
    else
        memcpy(*body, p->body, n);
    *len = n;
    return 0;
}

int lp_errpage_answer(const lp_config_t *c, const lp_route_conf_t *r, int status,
                      const char *detail, lp_error_answer_t *out)
{
    const lp_error_page_t *p = lp_errpage_find(c, r, status);
    *out = (lp_error_answer_t){p ? p->send_status : status, NULL, NULL, 0};
    if (out->status < 200 || out->status == 204 || out->status == 304)
        return 0;
    if (p) {
        out->content_type = p->content_type;
        return lp_errpage_render(p, status, detail, &out->body, &out->len);
    }
    const char *text = lp_h1_status_text(status);
    char body[256];
    int n = detail ? snprintf(body, sizeof(body), "%d %s: %s\n", status, text, detail)
                   : snprintf(body, sizeof(body), "%d %s\n", status, text);
    if (n < 0 || (size_t)n >= sizeof(body))
        n = snprintf(body, sizeof(body), "%d %s\n", status, text);
    out->content_type = "text/plain";
    if (!(out->body = malloc((size_t)n)))
        return LP_ENOMEM;
    memcpy(out->body, body, (size_t)n);
    out->len = (size_t)n;
    return 0;
}

int lp_errpage_grpc_status(int status)
{
    switch (status) {
    case 502:
    case 503:
        return 14; /* UNAVAILABLE */
    case 504:
    case 408:
        return 4; /* DEADLINE_EXCEEDED */
    case 429:
    case 413:
        return 8; /* RESOURCE_EXHAUSTED */
    case 404:
    case 405:
        return 12; /* UNIMPLEMENTED */
    case 500:
    case 400:
        return 13; /* INTERNAL */
    case 401:
        return 16; /* UNAUTHENTICATED */
    case 403:
        return 7; /* PERMISSION_DENIED */
    default:
        return 2; /* UNKNOWN */
    }
}

size_t lp_errpage_grpc_message(int status, char *out, size_t room)
{
    char raw[96];
    int n = snprintf(raw, sizeof(raw), "proxy: %d %s", status, lp_h1_status_text(status));
    size_t len = n < 0 ? 0 : (size_t)n < sizeof(raw) ? (size_t)n : sizeof(raw) - 1, k = 0;
    static const char hex[] = "0123456789ABCDEF";
    for (size_t i = 0; i < len && k + 4 <= room; i++) {
        unsigned char ch = (unsigned char)raw[i];
        if (ch >= 0x20 && ch < 0x7f && ch != '%') {
            out[k++] = (char)ch;
        } else {
            out[k++] = '%';
            out[k++] = hex[ch >> 4];
            out[k++] = hex[ch & 15];
        }
    }
    if (room)
        out[k < room ? k : room - 1] = 0;
    return k;
}

int lp_errpage_grpc_fields(int status, lp_errpage_field_fn add, void *ud)
{
    char code[12], msg[200];
    size_t clen = lp_u64_to_str((uint64_t)lp_errpage_grpc_status(status), 10, code);
    size_t mlen = lp_errpage_grpc_message(status, msg, sizeof(msg));
    return add(ud, "grpc-status", 11, code, clen) || add(ud, "grpc-message", 12, msg, mlen) ? -1
                                                                                            : 0;
}
