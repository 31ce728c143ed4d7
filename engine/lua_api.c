/* The functions Lua calls through the FFI (declared in lua/luaproxy/ffi.lua, which a unit
 * test checks against lua_api.h). Plain C: they never see a lua_State and never raise;
 * they return codes and the Lua wrappers turn those into values or errors. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "cache_req.h"
#include "compress.h"
#include "conn.h"
#include "log.h"
#include "lua_api.h"
#include "health.h"
#include "lua_vm.h"
#include "targets.h"
#include "tls.h"
#include "upstream.h"

void lp__lua_mark_responded(void);
int lp__lua_worker_id(void);

static lp_worker_t *req_worker(lp_req_t *r)
{
    return r->conn ? r->w : NULL;
}

static void set_out(lp_str_t *out, const char *p, size_t n)
{
    out->base = p;
    out->len = n;
}

int lp_ffi_req_get(void *rp, int what, lp_str_t *out)
{
    lp_req_t *r = rp;
    const lp_h1_t *h = &r->h1;
    switch (what) {
    case LP_FFI_METHOD: {
        const char *m = llhttp_method_name(r->method);
        set_out(out, m, strlen(m));
        return 0;
    }
    case LP_FFI_PATH: {
        const char *q = memchr(h->path.base, '?', h->path.len);
        set_out(out, h->path.base, q ? (size_t)(q - h->path.base) : h->path.len);
        return 0;
    }
    case LP_FFI_URI:
        set_out(out, h->path.base, h->path.len);
        return 0;
    case LP_FFI_QUERY: {
        const char *q = memchr(h->path.base, '?', h->path.len);
        if (!q)
            return -1;
        set_out(out, q + 1, h->path.len - (size_t)(q + 1 - h->path.base));
        return 0;
    }
    case LP_FFI_HOST: {
        size_t n = h->host.len;
        if (!h->host.base) {
            set_out(out, "", 0);
            return 0;
        }
        if (n && h->host.base[0] == '[') {
            const char *e = memchr(h->host.base, ']', n);
            n = e ? (size_t)(e - h->host.base) + 1 : n;
        } else {
            const char *colon = memchr(h->host.base, ':', n);
            if (colon)
                n = (size_t)(colon - h->host.base);
        }
        set_out(out, h->host.base, n);
        return 0;
    }
    case LP_FFI_SCHEME:
        if (lp_req_over_tls(r))
            set_out(out, "https", 5);
        else
            set_out(out, "http", 4);
        return 0;
    case LP_FFI_CLIENT_IP:
        if (!r->conn && !(r->flags & LP_RF_DETACHED))
            return -1;
        {
            const char *ip = lp_req_client_ip(r);
            set_out(out, ip, strlen(ip));
        }
        return 0;
    case LP_FFI_PEER_IP:
        if (!r->conn && !(r->flags & LP_RF_DETACHED))
            return -1;
        {
            const char *ip = lp_req_peer_ip(r);
            set_out(out, ip, strlen(ip));
        }
        return 0;
    case LP_FFI_UPSTREAM_NAME:
        if (!r->upstream)
            return -1;
        set_out(out, r->upstream->conf->name, strlen(r->upstream->conf->name));
        return 0;
    case LP_FFI_UPSTREAM_ADDR:
        if (!r->upstream || r->try.target < 0)
            return -1;
        set_out(out, r->try.target_addr, strlen(r->try.target_addr));
        return 0;
    case LP_FFI_VERSION:
        if (r->flags & LP_RF_H2)
            set_out(out, "2", 1);
        else
            set_out(out, r->minor ? "1.1" : "1.0", 3);
        return 0;
    }
    return -1;
}

/* The header list a call works on: the request's, or the response's (upstream or local). */
typedef struct {
    lp_header_t *v;
    unsigned *n;
    unsigned cap;
    lp_buf_t *arena;
    size_t *used;
} hlist_t;

static int hlist(lp_req_t *r, int resp, hlist_t *l)
{
    if (!resp) {
        l->v = r->h1.headers;
        l->n = &r->h1.nheaders;
        l->cap = r->cap_headers;
        l->arena = r->arena;
        l->used = &r->h1.arena_len;
        return 0;
    }
    if (!r->resp.arena) {
        lp_worker_t *w = req_worker(r);
        if (!w || !(r->resp.arena = lp_buf_get(&w->bufs, LP_BUF_SMALL)))
            return -1;
        r->resp.nheaders = 0;
        r->resp.arena_used = 0;
    }
    l->v = r->resp.headers;
    l->n = &r->resp.nheaders;
    l->cap = r->cap_headers;
    l->arena = r->resp.arena;
    l->used = &r->resp.arena_used;
    return 0;
}

int lp_ffi_header_get(void *rp, int resp, const char *name, size_t nlen, int nth, lp_str_t *out)
{
    lp_req_t *r = rp;
    hlist_t l;
    if (resp && !r->resp.arena)
        return 0;
    if (hlist(r, resp, &l))
        return 0;
    int seen = 0;
    for (unsigned i = 0; i < *l.n; i++) {
        if (lp_str_ieq(l.v[i].name, name, nlen) && seen++ == nth) {
            *out = l.v[i].value;
            return 1;
        }
    }
    return 0;
}

int lp_ffi_header_count(void *rp, int resp)
{
    lp_req_t *r = rp;
    if (resp)
        return r->resp.arena ? (int)r->resp.nheaders : 0;
    return (int)r->h1.nheaders;
}

int lp_ffi_header_at(void *rp, int resp, int i, lp_str_t *name, lp_str_t *value)
{
    lp_req_t *r = rp;
    hlist_t l;
    if ((resp && !r->resp.arena) || hlist(r, resp, &l) || i < 0 || (unsigned)i >= *l.n)
        return -1;
    *name = l.v[i].name;
    *value = l.v[i].value;
    return 0;
}

static int valid_value(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return 0;
    }
    return 1;
}

static int is_framing(const char *name, size_t n)
{
    lp_str_t s = {name, n};
    return LP_STR_IEQ(s, "content-length") || LP_STR_IEQ(s, "transfer-encoding");
}

/* Copies bytes into the list's arena (growing it); NULL past the limits. */
static const char *arena_copy(lp_req_t *r, int resp, hlist_t *l, const char *p, size_t n)
{
    if (*l->used + n > l->arena->cap) {
        if (!r->conn || lp_req_grow(r, resp, *l->used + n))
            return NULL;
        hlist(r, resp, l);
    }
    char *dst = l->arena->data + *l->used;
    memcpy(dst, p, n);
    *l->used += n;
    return dst;
}

int lp_ffi_header_set(void *rp, int resp, int mode, const char *name, size_t nlen,
                      const char *value, size_t vlen)
{
    lp_req_t *r = rp;
    hlist_t l;
    if (!lp_h1_tchar_token((lp_str_t){name, nlen}))
        return LP_FFI_EINVAL;
    if (mode != LP_FFI_HCLEAR && !valid_value(value, vlen))
        return LP_FFI_EINVAL;
    if (is_framing(name, nlen))
        return LP_FFI_EFRAMING; /* the engine owns message framing */
    if (hlist(r, resp, &l))
        return LP_FFI_ENOSPACE;
    if (mode == LP_FFI_HSET || mode == LP_FFI_HCLEAR) {
        unsigned k = 0;
        for (unsigned i = 0; i < *l.n; i++)
            if (!lp_str_ieq(l.v[i].name, name, nlen))
                l.v[k++] = l.v[i];
        *l.n = k;
    }
    int is_host = !resp && lp_str_ieq((lp_str_t){name, nlen}, "host", 4);
    if (mode == LP_FFI_HCLEAR) {
        if (is_host)
            r->h1.host = (lp_str_t){NULL, 0};
        return 0;
    }
    if (*l.n >= l.cap)
        return LP_FFI_ENOSPACE;
    const char *n = arena_copy(r, resp, &l, name, nlen);
    if (!n)
        return LP_FFI_ENOSPACE;
    size_t noff = (size_t)(n - l.arena->data);
    const char *v = arena_copy(r, resp, &l, value, vlen);
    if (!v)
        return LP_FFI_ENOSPACE;
    n = l.arena->data + noff; /* the name moved if the value made the arena grow */
    l.v[*l.n].name = (lp_str_t){n, nlen};
    l.v[*l.n].value = (lp_str_t){v, vlen};
    (*l.n)++;
    if (is_host)
        r->h1.host = (lp_str_t){v, vlen};
    return 0;
}

int lp_ffi_set_path(void *rp, const char *p, size_t n)
{
    lp_req_t *r = rp;
    if (!n || p[0] != '/')
        return LP_FFI_EINVAL;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)p[i];
        if (c <= 0x20 || c == 0x7f)
            return LP_FFI_EINVAL; /* no spaces or controls in a request target */
    }
    hlist_t l;
    hlist(r, 0, &l);
    const char *s = arena_copy(r, 0, &l, p, n);
    if (!s)
        return LP_FFI_ENOSPACE;
    r->h1.path = (lp_str_t){s, n};
    r->flags |= LP_RF_PATH_SET;
    return 0;
}

int lp_ffi_set_query(void *rp, const char *q, size_t n)
{
    lp_req_t *r = rp;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)q[i];
        if (c <= 0x20 || c == 0x7f || c == '#')
            return LP_FFI_EINVAL; /* no spaces, controls or fragment in a request target */
    }
    const lp_str_t old = r->h1.path;
    const char *mark = memchr(old.base, '?', old.len);
    size_t plen = mark ? (size_t)(mark - old.base) : old.len;
    size_t total = plen + (n ? 1 + n : 0);
    char *tmp = malloc(total ? total : 1);
    if (!tmp)
        return LP_FFI_ENOSPACE;
    memcpy(tmp, old.base, plen);
    if (n) {
        tmp[plen] = '?';
        memcpy(tmp + plen + 1, q, n);
    }
    hlist_t l;
    hlist(r, 0, &l);
    const char *s = arena_copy(r, 0, &l, tmp, total);
    free(tmp);
    if (!s)
        return LP_FFI_ENOSPACE;
    /* The path part is the one the client sent (or Lua set): strip_prefix still applies,
     * unlike after set_path, which is why LP_RF_PATH_SET is left as it was. */
    r->h1.path = (lp_str_t){s, total};
    return 0;
}

int lp_ffi_set_upstream(void *rp, const char *name, size_t n)
{
    lp_req_t *r = rp;
    lp_worker_t *w = req_worker(r);
    if (!w)
        return LP_FFI_EINVAL;
    const lp_config_t *cfg = r->g->config;
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const char *un = cfg->upstreams[i].name;
        if (strlen(un) == n && memcmp(un, name, n) == 0) {
            lp_upstream_dyn_release(r);
            r->upstream = &r->g->upstreams[i];
            return 0;
        }
    }
    return LP_FFI_EINVAL;
}

int lp_ffi_set_target(void *rp, const char *host, size_t n, int port)
{
    lp_req_t *r = rp;
    lp_worker_t *w = req_worker(r);
    char ip[64], text[80];
    if (!w || n == 0 || n >= sizeof(ip) || port <= 0 || port > 65535)
        return LP_FFI_EINVAL;
    memcpy(ip, host, n);
    ip[n] = 0;
    struct sockaddr_storage ss;
    if (uv_ip4_addr(ip, port, (struct sockaddr_in *)&ss) &&
        uv_ip6_addr(ip, port, (struct sockaddr_in6 *)&ss))
        return LP_FFI_EINVAL; /* an IP address: a name would block on DNS */
    snprintf(text, sizeof(text), strchr(ip, ':') ? "[%s]:%d" : "%s:%d", ip, port);
    if (lp_upstream_set_dynamic(r, (struct sockaddr *)&ss, text))
        return LP_FFI_ENOSPACE;
    r->try.tried_up = NULL; /* Lua's explicit choice is tried even if an earlier try went there */
    return 0;
}

int lp_ffi_set_hash_key(void *rp, const char *key, size_t n)
{
    lp_req_t *r = rp;
    hlist_t l;
    hlist(r, 0, &l);
    const char *s = arena_copy(r, 0, &l, key, n);
    if (!s)
        return LP_FFI_ENOSPACE;
    r->hash_key = (lp_str_t){s, n};
    return 0;
}

void lp_ffi_set_body_limit(void *rp, double n)
{
    lp_req_t *r = rp;
    r->body_limit = n >= 9e15 ? 0 : (uint64_t)n;
}

int lp_ffi_log_field(void *rp, const char *name, size_t nlen, int kind, const char *value,
                     size_t vlen)
{
    lp_req_t *r = rp;
    unsigned max = r->g ? r->g->config->log_max_fields : 16;
    int rc = lp_logfields_set(&r->log_fields, max, name, nlen, kind, value, vlen);
    return rc == 0 ? 0 : rc == LP_EINVAL ? LP_FFI_EINVAL : LP_FFI_ENOSPACE;
}

/* The FFI numbering is tls.h's. */
_Static_assert((int)LP_FFI_TLS_PROTOCOL == (int)LP_TLS_F_PROTOCOL &&
                   (int)LP_FFI_TLS_CLIENT_SUBJECT == (int)LP_TLS_F_CLIENT_SUBJECT,
               "lp_ffi_tls_get passes `what` to lp_tls_fact");

int lp_ffi_tls_get(void *rp, int what, lp_str_t *out)
{
    lp_req_t *r = rp;
    if (!r->conn || !r->conn->ep.tls || what < LP_TLS_F_PROTOCOL || what > LP_TLS_F_CLIENT_SUBJECT)
        return -1;
    /* The subject is formatted on demand; Lua copies it at once (one call at a time). */
    static _Thread_local char subject[512];
    size_t n;
    const char *v = lp_tls_fact(r->conn->ep.tls, what, subject, sizeof(subject), &n);
    if (!v)
        return -1;
    set_out(out, v, n);
    return 0;
}

int lp_ffi_trailers(void *rp, int resp, lp_str_t *out)
{
    const lp_req_t *r = rp;
    const char *t = resp ? r->resp.trailers : r->trailers;
    set_out(out, t ? t : "", t ? (resp ? r->resp.trailers_len : r->trailers_len) : 0);
    return 0;
}

int lp_ffi_status(void *rp)
{
    const lp_req_t *r = rp;
    /* The log phase sees what the client got, as the access log does: a gRPC failure
     * answered or ended by the proxy went out as HTTP 200 but stands for its 502/504, and
     * a client that left first is a 499. */
    if ((r->flags & LP_RF_LOG_DONE) && r->resp.sent_status)
        return r->resp.sent_status;
    return r->resp.status;
}

int lp_ffi_set_status(void *rp, int status)
{
    if (status < 100 || status > 999)
        return LP_FFI_EINVAL;
    ((lp_req_t *)rp)->resp.status = status;
    return 0;
}

int lp_ffi_respond_begin(void *rp)
{
    if (!lp__lua_runs(rp))
        return LP_FFI_EOTHER;
    return lp__resp_begin(rp);
}

int lp__resp_begin(lp_req_t *r)
{
    hlist_t l;
    if (hlist(r, 1, &l))
        return LP_FFI_ENOSPACE;
    r->resp.nheaders = 0;
    r->resp.arena_used = 0;
    free(r->resp.trailers); /* a new answer: the upstream's trailers are not its own */
    r->resp.trailers = NULL;
    r->resp.trailers_len = 0;
    r->resp.zip_coding = LP_ZIP_NONE; /* a new answer: its own decision */
    r->resp.win = 0;                  /* ... and its own body, whole */
    /* A new answer has its own body: a cache hit's entry, set up before (a plugin failing
     * in the hit's response phase), must not go out under the new head's length. */
    lp_cache_req_body_done(r);
    return 0;
}

/* The "Name: value\r\n" line at s (before end): its name, its value and the next line's
 * start in *next. Checked (lp_h1_tchar_token's test and valid_value's, each in the pass that
 * finds the end) unless `trusted`: lines lp__wire_valid passed already (a hit's stored
 * fields, checked once per decoded head) are only split, with memchr. 0, or LP_FFI_EINVAL. */
static int wire_line(const char *s, const char *end, int trusted, lp_str_t *name, lp_str_t *value,
                     const char **next)
{
    const char *colon, *eol;
    if (trusted) {
        colon = memchr(s, ':', (size_t)(end - s));
        eol = colon ? memchr(colon, '\r', (size_t)(end - colon)) : NULL;
        if (!colon || !eol || end - eol < 2 || eol[1] != '\n' || colon + 2 > eol)
            return LP_FFI_EINVAL;
    } else {
        colon = s;
        while (colon < end && lp_is_tchar((unsigned char)*colon))
            colon++;
        if (colon == s || end - colon < 4 || colon[0] != ':' || colon[1] != ' ')
            return LP_FFI_EINVAL;
        for (eol = colon + 2; eol < end; eol++) {
            unsigned char c = (unsigned char)*eol;
            if ((c < 0x20 && c != '\t') || c == 0x7f)
                break;
        }
        if (end - eol < 2 || eol[0] != '\r' || eol[1] != '\n')
            return LP_FFI_EINVAL;
    }
    *name = (lp_str_t){s, (size_t)(colon - s)};
    *value = (lp_str_t){colon + 2, (size_t)(eol - colon - 2)};
    *next = eol + 2;
    return 0;
}

int lp__wire_valid(const char *p, size_t n)
{
    const char *end = p + n;
    lp_str_t name, value;
    while (p < end) {
        if (wire_line(p, end, 0, &name, &value, &p))
            return LP_FFI_EINVAL;
        if ((name.len == 14 || name.len == 17) && is_framing(name.base, name.len))
            return LP_FFI_EFRAMING;
    }
    return 0;
}

int lp__resp_add_wire(lp_req_t *r, const char *p, size_t n, int trusted)
{
    hlist_t l;
    if (!n)
        return 0;
    if (hlist(r, 1, &l))
        return LP_FFI_ENOSPACE;
    const char *s = arena_copy(r, 1, &l, p, n); /* the fields point into this copy */
    if (!s)
        return LP_FFI_ENOSPACE;
    const char *end = s + n;
    while (s < end) {
        lp_str_t name, value;
        if (wire_line(s, end, trusted, &name, &value, &s))
            return LP_FFI_EINVAL;
        if (!trusted && (name.len == 14 || name.len == 17) && is_framing(name.base, name.len))
            return LP_FFI_EFRAMING;
        if (*l.n >= l.cap)
            return LP_FFI_ENOSPACE;
        l.v[*l.n].name = name;
        l.v[*l.n].value = value;
        (*l.n)++;
    }
    return 0;
}

int lp__resp_add_line(lp_req_t *r, const char *p, size_t n, size_t nlen)
{
    if (n < nlen + 4)
        return LP_FFI_EINVAL;
    /* The common case (every stored miss's Cache-Status) without the list's set-up: an arena
     * with room for the line and a free slot. */
    lp_buf_t *a = r->resp.arena;
    if (a && r->resp.nheaders < r->cap_headers && r->resp.arena_used + n <= a->cap) {
        char *s = a->data + r->resp.arena_used;
        memcpy(s, p, n);
        r->resp.arena_used += n;
        r->resp.headers[r->resp.nheaders++] =
            (lp_header_t){{s, nlen}, {s + nlen + 2, n - nlen - 4}};
        return 0;
    }
    hlist_t l;
    if (hlist(r, 1, &l) || *l.n >= l.cap)
        return LP_FFI_ENOSPACE;
    const char *s = arena_copy(r, 1, &l, p, n); /* the field points into this copy */
    if (!s)
        return LP_FFI_ENOSPACE;
    l.v[*l.n].name = (lp_str_t){s, nlen};
    l.v[*l.n].value = (lp_str_t){s + nlen + 2, n - nlen - 4};
    (*l.n)++;
    return 0;
}

int lp_ffi_respond(void *rp, int status, const char *body, size_t len)
{
    lp_req_t *r = rp;
    if (!lp__lua_runs(r))
        return LP_FFI_EOTHER;
    if (status < 200 || status > 999)
        return LP_FFI_EINVAL;
    free(r->resp.local_body);
    r->resp.local_body = NULL;
    r->resp.local_body_len = 0;
    if (len) {
        r->resp.local_body = malloc(len);
        if (!r->resp.local_body)
            return LP_FFI_ENOSPACE;
        memcpy(r->resp.local_body, body, len);
        r->resp.local_body_len = len;
    }
    r->resp.status = status;
    r->flags |= LP_RF_LOCAL;
    lp__lua_mark_responded();
    return 0;
}

void lp_ffi_log(int level, const char *msg, size_t len)
{
    if (level < LP_LOG_ERROR || level > LP_LOG_DEBUG)
        level = LP_LOG_INFO;
    if ((lp_log_level_t)level <= lp_log_level)
        lp_log((lp_log_level_t)level, "lua: %.*s", (int)(len > 4000 ? 4000 : len), msg);
}

/* Both clocks are read through the vDSO (no system call): as cheap as a cached value, and
 * never stale in the middle of long Lua code. CLOCK_REALTIME_COARSE moved in 4 ms steps,
 * which made timing a request useless. */
double lp_ffi_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double lp_ffi_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double lp_ffi_start_time(void *rp)
{
    lp_req_t *r = rp;
    /* t_start is uv_hrtime() (monotonic ns): moved onto the wall clock. */
    double age = (double)(uv_hrtime() - r->t_start) / 1e9;
    return lp_ffi_now() - age;
}

int lp_ffi_worker_id(void)
{
    return lp__lua_worker_id();
}

int lp_ffi_last_failure(void *rp, lp_str_t *addr, int *status)
{
    lp_req_t *r = rp;
    /* tries is reset per request by the engine: fail_kind of an earlier request on a
     * recycled object never shows. */
    if (!r->try.tries || r->try.fail_kind == LP_FAIL_NONE)
        return 0;
    set_out(addr, r->try.target_addr, strlen(r->try.target_addr));
    *status = r->try.fail_status;
    return r->try.fail_kind;
}

int lp_ffi_upstream_find(const char *name, size_t n)
{
    size_t nups;
    lp_upstream_rt_t *ups = lp__lua_upstreams(&nups);
    if (!ups)
        return LP_FFI_EPHASE;
    for (size_t i = 0; i < nups; i++)
        if (strlen(ups[i].conf->name) == n && memcmp(ups[i].conf->name, name, n) == 0)
            return (int)i;
    return LP_FFI_EINVAL;
}

static lp_upstream_rt_t *ffi_upstream(int i)
{
    size_t nups;
    lp_upstream_rt_t *ups = lp__lua_upstreams(&nups);
    return ups && i >= 0 && (size_t)i < nups ? &ups[i] : NULL;
}

int lp_ffi_upstream_target(int ui, int op, const char *addr, size_t n, int weight)
{
    lp_upstream_rt_t *u = ffi_upstream(ui);
    char text[300], host[256], err[300];
    int port;
    if (!u)
        return LP_FFI_EPHASE;
    if (n == 0 || n >= sizeof(text) || weight < 1 || weight > 10000)
        return LP_FFI_EINVAL;
    memcpy(text, addr, n);
    text[n] = 0;
    if (op != LP_FFI_TADD) {
        int rc = op == LP_FFI_TREMOVE ? lp_targets_remove(u, text)
                                      : lp_targets_set_weight(u, text, (unsigned)weight);
        return rc == LP_EINVAL ? LP_FFI_ENOTFOUND : rc ? LP_FFI_ENOSPACE : 0;
    }
    /* Addresses only: resolving a name here would block the worker's loop. */
    lp_addr_t a = {.text = text};
    if (lp_addr_split(text, host, sizeof(host), &port, err, sizeof(err)) || port == 0 ||
        !lp_addr_is_ip(host))
        return LP_FFI_EINVAL;
    if (strchr(host, ':')) {
        if (uv_ip6_addr(host, port, (struct sockaddr_in6 *)&a.addr))
            return LP_FFI_EINVAL;
        a.addrlen = sizeof(struct sockaddr_in6);
    } else {
        if (uv_ip4_addr(host, port, (struct sockaddr_in *)&a.addr))
            return LP_FFI_EINVAL;
        a.addrlen = sizeof(struct sockaddr_in);
    }
    int rc = lp_targets_add(u, &a, (unsigned)weight, -1);
    return rc < 0 ? LP_FFI_ENOSPACE : rc;
}

int lp_ffi_upstream_target_at(int ui, int i, lp_str_t *addr, lp_str_t *state)
{
    lp_upstream_rt_t *u = ffi_upstream(ui);
    if (!u || i < 0 || (size_t)i >= u->ntargets)
        return -1;
    lp_target_rt_t *t = u->targets[i];
    const char *st = lp_health_state(t->health, lp_health_now());
    set_out(addr, t->addr.text, strlen(t->addr.text));
    set_out(state, st, strlen(st));
    return (int)t->weight;
}

int lp_ffi_req_param(void *rp, const char *name, size_t n, lp_str_t *out)
{
    const lp_req_t *r = rp;
    for (unsigned i = 0; i < r->nparams; i++)
        if (strlen(r->params[i].name) == n && memcmp(r->params[i].name, name, n) == 0) {
            *out = r->params[i].value;
            return 0;
        }
    return -1;
}

int lp_ffi_resp_compress(void *rp, int coding, int level, double min_length)
{
    lp_req_t *r = rp;
    int max = coding == LP_ZIP_GZIP ? LP_ZIP_GZIP_MAX : LP_ZIP_BR_MAX;
    if ((coding != LP_ZIP_GZIP && coding != LP_ZIP_BR) || level < (coding == LP_ZIP_GZIP) ||
        level > max || !(min_length >= 0))
        return LP_FFI_EINVAL;
    /* The body's length when known: a local answer's, or the upstream's Content-Length.
     * Unknown (chunked, close-delimited, a body filter's): compressed whatever its size. */
    int known = 0;
    uint64_t len = 0;
    if (r->flags & LP_RF_LOCAL) {
        known = 1;
        len = r->resp.local_body_len;
    } else if (r->try.peer) {
        const lp_h1_t *rh = &r->try.peer->h1;
        if ((rh->flags & LP_H1F_LENGTH) && !(rh->flags & LP_H1F_CHUNKED)) {
            known = 1;
            len = rh->content_length;
        }
    }
    if (known && (double)len < min_length) {
        r->resp.zip_coding = LP_ZIP_NONE;
        return 0;
    }
    r->resp.zip_coding = (uint8_t)coding;
    r->resp.zip_level = (uint8_t)level;
    return 1;
}
