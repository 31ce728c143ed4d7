#include <stdio.h>
#include <sys/random.h>
#include <time.h>
#include "request.h"
#include "trace.h"
#include "lua_api.h"

/* ---- hex ---- */

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1; /* upper case is invalid in trace context */
}

/* n bytes from 2n lower-case hex digits; -1 on any other character. */
static int unhex(const char *s, uint8_t *out, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    return 0;
}

static int all_zero(const uint8_t *id, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (id[i])
            return 0;
    return 1;
}

void lp_trace_hex(char *out, const uint8_t *id, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[id[i] >> 4];
        out[2 * i + 1] = digits[id[i] & 15];
    }
}

static int ows(char c)
{
    return c == ' ' || c == '\t';
}

static void trim(const char **s, size_t *n)
{
    while (*n && ows((*s)[0]))
        (*s)++, (*n)--;
    while (*n && ows((*s)[*n - 1]))
        (*n)--;
}

/* ---- traceparent ---- */

int lp_traceparent_parse(const char *s, size_t n, uint8_t trace_id[16], uint8_t parent_id[8],
                         uint8_t *flags)
{
    trim(&s, &n);
    uint8_t version, f;
    if (n < LP_TRACEPARENT_LEN || unhex(s, &version, 1) || version == 0xff || s[2] != '-' ||
        unhex(s + 3, trace_id, 16) || s[35] != '-' || unhex(s + 36, parent_id, 8) || s[52] != '-' ||
        unhex(s + 53, &f, 1))
        return -1;
    /* Version 00 is exactly this long; a later version may add fields after a '-'. */
    if (version == 0 ? n != LP_TRACEPARENT_LEN : (n > LP_TRACEPARENT_LEN && s[55] != '-'))
        return -1;
    if (all_zero(trace_id, 16) || all_zero(parent_id, 8))
        return -1;
    *flags = f;
    return 0;
}

void lp_traceparent_format(char *out, const uint8_t trace_id[16], const uint8_t span_id[8],
                           uint8_t flags)
{
    memcpy(out, "00-", 3);
    lp_trace_hex(out + 3, trace_id, 16);
    out[35] = '-';
    lp_trace_hex(out + 36, span_id, 8);
    out[52] = '-';
    lp_trace_hex(out + 53, &flags, 1);
}

/* ---- tracestate ---- */

#define TRACESTATE_MEMBERS 32

static int lcalpha(char c)
{
    return c >= 'a' && c <= 'z';
}

static int key_char(char c)
{
    return lcalpha(c) || (c >= '0' && c <= '9') || c == '_' || c == '-' || c == '*' || c == '/';
}

/* simple-key = lcalpha 0*255(keychar); multi-tenant-key = tenant-id "@" system-id with
 * tenant-id = (lcalpha / DIGIT) 0*240(keychar), system-id = lcalpha 0*13(keychar). */
static int valid_key(const char *k, size_t n)
{
    const char *at = memchr(k, '@', n);
    if (!at) {
        if (n < 1 || n > 256 || !lcalpha(k[0]))
            return 0;
        for (size_t i = 1; i < n; i++)
            if (!key_char(k[i]))
                return 0;
        return 1;
    }
    size_t tn = (size_t)(at - k), sn = n - tn - 1;
    if (tn < 1 || tn > 241 || sn < 1 || sn > 14 ||
        !(lcalpha(k[0]) || (k[0] >= '0' && k[0] <= '9')) || !lcalpha(at[1]))
        return 0;
    for (size_t i = 1; i < n; i++)
        if (i != tn && !key_char(k[i]))
            return 0;
    return 1;
}

/* value = 0*255(chr) nblk-chr; chr = %x20 / nblk-chr; nblk-chr = %x21-2B / %x2D-3C / %x3E-7E */
static int valid_value(const char *v, size_t n)
{
    if (n < 1 || n > 256 || v[n - 1] == ' ')
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c == ' ')
            continue;
        if (c < 0x21 || c > 0x7e || c == ',' || c == '=')
            return 0;
    }
    return 1;
}

int lp_tracestate_combine(const lp_str_t *values, size_t nvalues, char *out, size_t cap)
{
    lp_str_t m[TRACESTATE_MEMBERS];
    size_t keylen[TRACESTATE_MEMBERS];
    size_t nm = 0;
    for (size_t v = 0; v < nvalues; v++) {
        const char *p = values[v].base, *end = p + values[v].len;
        while (p <= end) {
            const char *comma = memchr(p, ',', (size_t)(end - p));
            const char *e = comma ? comma : end;
            const char *s = p;
            size_t n = (size_t)(e - p);
            p = e + 1;
            trim(&s, &n);
            if (!n)
                continue; /* empty list members are allowed */
            const char *eq = memchr(s, '=', n);
            if (!eq)
                return -1;
            size_t kn = (size_t)(eq - s);
            if (!valid_key(s, kn) || !valid_value(eq + 1, n - kn - 1) || nm == TRACESTATE_MEMBERS)
                return -1;
            for (size_t i = 0; i < nm; i++)
                if (keylen[i] == kn && memcmp(m[i].base, s, kn) == 0)
                    return -1; /* a key twice */
            m[nm] = (lp_str_t){s, n};
            keylen[nm++] = kn;
        }
    }
    size_t total = 0;
    for (size_t i = 0; i < nm; i++)
        total += m[i].len + (i > 0);
    /* Too long: members over 128 characters go first, then members from the end. */
    for (size_t i = 0; total > cap && i < nm; i++)
        if (m[i].len > 128) {
            total -= m[i].len + 1;
            m[i].len = 0;
        }
    for (size_t i = nm; total > cap && i-- > 0;)
        if (m[i].len) {
            total -= m[i].len + 1;
            m[i].len = 0;
        }
    size_t o = 0;
    for (size_t i = 0; i < nm; i++) {
        if (!m[i].len)
            continue;
        if (o)
            out[o++] = ',';
        memcpy(out + o, m[i].base, m[i].len);
        o += m[i].len;
    }
    return (int)o;
}

/* ---- ids ---- */

/* xoshiro256** (Blackman and Vigna, public domain algorithm), one state per thread, seeded
 * from the kernel's CSPRNG. Fast (a few ns per id) and unpredictable enough for ids that
 * must not collide; the seed, not the generator, is what an outsider cannot guess. */
static _Thread_local uint64_t rng[4];
static _Thread_local int rng_ready;

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

static uint64_t rng_next(void)
{
    if (!rng_ready) {
        if (getrandom(rng, sizeof(rng), 0) != (ssize_t)sizeof(rng)) {
            /* No getrandom (a very old kernel): the clock and the thread's stack address,
             * stirred (splitmix64), rather than failing requests. */
            struct timespec ts;
            clock_gettime(CLOCK_REALTIME, &ts);
            uint64_t z = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 30) ^ (uintptr_t)&ts;
            for (int i = 0; i < 4; i++) {
                z += 0x9e3779b97f4a7c15ULL;
                uint64_t x = z;
                x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
                x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
                rng[i] = x ^ (x >> 31);
            }
        }
        if (!(rng[0] | rng[1] | rng[2] | rng[3]))
            rng[0] = 1; /* the one state the generator cannot leave */
        rng_ready = 1;
    }
    uint64_t r = rotl(rng[1] * 5, 7) * 9, t = rng[1] << 17;
    rng[2] ^= rng[0];
    rng[3] ^= rng[1];
    rng[1] ^= rng[2];
    rng[0] ^= rng[3];
    rng[2] ^= t;
    rng[3] = rotl(rng[3], 45);
    return r;
}

void lp_trace_random_id(uint8_t *out, size_t n)
{
    do {
        for (size_t i = 0; i < n; i += 8) {
            uint64_t r = rng_next();
            memcpy(out + i, &r, n - i < 8 ? n - i : 8);
        }
    } while (all_zero(out, n));
}

double lp_trace_random_unit(void)
{
    return (double)(rng_next() >> 11) * 0x1.0p-53;
}

/* ---- a request's trace ---- */

/* Most tracestate headers combined; a request with more has its tracestate dropped. */
#define TRACESTATE_HEADERS 16

/* The client's context, when valid: 1, with the ids, flags and tracestate set. */
static int accept_incoming(lp_req_t *req, uint8_t *flags)
{
    lp_trace_t *t = &req->trace;
    const lp_h1_t *h = &req->h1;
    const lp_header_t *tp = NULL;
    lp_str_t ts[TRACESTATE_HEADERS];
    size_t nts = 0;
    int bad_ts = 0;
    for (unsigned i = 0; i < h->nheaders; i++) {
        const lp_header_t *hd = &h->headers[i];
        if (LP_STR_IEQ(hd->name, "traceparent")) {
            if (tp)
                return 0; /* two traceparents: which one? Neither (a new trace). */
            tp = hd;
        } else if (LP_STR_IEQ(hd->name, "tracestate")) {
            if (nts < TRACESTATE_HEADERS)
                ts[nts++] = hd->value;
            else
                bad_ts = 1;
        }
    }
    if (!tp || !tp->value.base ||
        lp_traceparent_parse(tp->value.base, tp->value.len, t->trace_id, t->parent_id, flags))
        return 0;
    int n = bad_ts ? -1 : lp_tracestate_combine(ts, nts, t->tracestate, LP_TRACESTATE_MAX);
    t->tracestate_len = (uint16_t)(n > 0 ? n : 0);
    return 1;
}

void lp_trace_start(lp_req_t *req)
{
    const lp_trace_conf_t *tc = &req->g->config->tracing;
    lp_trace_t *t = &req->trace;
    t->on = t->recorded = t->ntries = t->tries_lost = t->cur_try = 0;
    t->tracestate_len = 0;
    if (!tc->enabled)
        return;
    t->on = 1;
    uint8_t flags = 0;
    if (tc->accept && accept_incoming(req, &flags)) {
        t->sampled = flags & 1; /* the parent's decision */
    } else {
        memset(t->parent_id, 0, sizeof(t->parent_id));
        t->tracestate_len = 0;
        lp_trace_random_id(t->trace_id, 16);
        t->sampled = tc->sample >= 1.0 || (tc->sample > 0 && lp_trace_random_unit() < tc->sample);
    }
    lp_trace_random_id(t->span_id, 8);
    t->recorded = t->sampled && tc->export_on;
}

void lp_trace_try_begin(lp_req_t *req)
{
    lp_trace_t *t = &req->trace;
    if (!t->recorded)
        return;
    if (t->ntries && t->tries[t->ntries - 1].failed && !t->tries[t->ntries - 1].fail_kind)
        t->tries[t->ntries - 1].fail_kind = req->try.fail_kind; /* set after it ended */
    if (t->ntries == LP_TRACE_TRIES) {
        if (t->tries_lost < 255)
            t->tries_lost++;
        t->cur_try = 0;
        return;
    }
    lp_trace_try_t *tr = &t->tries[t->ntries++];
    lp_trace_random_id(tr->span_id, 8);
    tr->start = req->try.t_try;
    tr->end = 0;
    tr->status = 0;
    tr->failed = tr->fail_kind = 0;
    size_t n = strlen(req->try.target_addr);
    if (n >= sizeof(tr->addr))
        n = sizeof(tr->addr) - 1;
    memcpy(tr->addr, req->try.target_addr, n);
    tr->addr[n] = 0;
    t->cur_try = t->ntries;
}

void lp_trace_try_end(lp_req_t *req, int failed)
{
    lp_trace_t *t = &req->trace;
    if (!t->cur_try)
        return;
    lp_trace_try_t *tr = &t->tries[t->cur_try - 1];
    t->cur_try = 0;
    tr->end = uv_hrtime();
    tr->failed = (uint8_t)failed;
    /* A retry_on status is in sent_status while its try ends. */
    int st = failed ? req->resp.sent_status : req->resp.status;
    tr->status = (uint16_t)(st > 0 && st < 1000 ? st : 0);
}

void lp_trace_finish(lp_req_t *req)
{
    lp_trace_t *t = &req->trace;
    if (!t->on || !t->recorded)
        return;
    if (t->ntries && t->tries[t->ntries - 1].failed && !t->tries[t->ntries - 1].fail_kind)
        t->tries[t->ntries - 1].fail_kind = req->try.fail_kind;
    lp_req_client_ip(req); /* formatted while the connection is there */
    lp_trace_export_request(req->w, req);
}

lp_str_t lp_trace_upstream_fields(const lp_req_t *req, char *traceparent)
{
    const lp_trace_t *t = &req->trace;
    const uint8_t *parent = t->cur_try ? t->tries[t->cur_try - 1].span_id : t->span_id;
    lp_traceparent_format(traceparent, t->trace_id, parent, t->sampled ? 1 : 0);
    return (lp_str_t){t->tracestate, t->tracestate_len};
}

int lp_trace_is_header(const lp_req_t *req, lp_str_t name)
{
    return req->trace.on && (LP_STR_IEQ(name, "traceparent") || LP_STR_IEQ(name, "tracestate"));
}

const char *lp_trace_tag(const lp_req_t *req)
{
    static _Thread_local char tag[48];
    if (!req || !req->trace.on)
        return "";
    memcpy(tag, " trace_id=", 10);
    lp_trace_hex(tag + 10, req->trace.trace_id, 16);
    tag[42] = 0;
    return tag;
}

/* ---- Lua ---- */

int lp_ffi_trace_ids(void *rp, char *out)
{
    const lp_trace_t *t = &((lp_req_t *)rp)->trace;
    if (!t->on)
        return -1;
    lp_trace_hex(out, t->trace_id, 16);
    lp_trace_hex(out + 32, t->span_id, 8);
    lp_trace_hex(out + 48, t->parent_id, 8);
    return (t->sampled ? LP_FFI_TRACE_SAMPLED : 0) |
           (all_zero(t->parent_id, 8) ? 0 : LP_FFI_TRACE_PARENT) |
           (t->recorded ? LP_FFI_TRACE_RECORDED : 0);
}
