#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "accesslog.h"
#include "conn.h"
#include "log.h"
#include "logfield.h"
#include "logw.h"
#include "tls.h"
#include "trace.h"

/* The chunk a worker gathers lines in before handing it to the writer (logw.h) without
 * waiting for the flush interval, and the longest line a chunk grows for: a longer one is
 * dropped with a warning rather than cut, which would break a JSON line. Lines are bounded
 * by the request limits anyway. */
#define LP_ACCESSLOG_BUF      LP_LOGCHUNK_SIZE
#define LP_ACCESSLOG_LINE_MAX (16 * 1024 * 1024)

typedef enum {
    V_LITERAL,
    V_REMOTE_ADDR,
    V_TIME_ISO8601,
    V_TIME_LOCAL,
    V_REQUEST,
    V_METHOD,
    V_URI,
    V_STATUS,
    V_BODY_BYTES_SENT,
    V_UPSTREAM_ADDR,
    V_REQUEST_TIME,
    V_UPSTREAM_RESPONSE_TIME,
    V_HOST,
    V_SCHEME,
    V_SSL_PROTOCOL,
    V_SSL_CIPHER,
    V_SSL_SERVER_NAME,
    V_SSL_SESSION_REUSED,
    V_SSL_CLIENT_S_DN,
    V_HTTP_HEADER, /* $http_<name> */
    /* #14 */
    V_REALIP_REMOTE_ADDR, /* the TCP peer (nginx's name), whatever real_ip made $remote_addr */
    V_LOG_FIELD,          /* $log_field_<name>: req:log_field() */
    V_LOG_FIELDS,         /* JSON lines: every req:log_field() member, before the closing brace */
    V_TRACE_ID,           /* the request's trace (engine/trace.h) */
    V_SPAN_ID,
    V_PARENT_SPAN_ID,
} var_t;

/* How a variable's value is written (op_t.mode). */
typedef enum {
    M_TEXT,      /* text line: "-" when absent or empty; other bytes as text_escape() says */
    M_JSON,      /* a JSON member's whole value: a number, a string, or null when absent */
    M_JSON_PART, /* inside a JSON string (any template but exactly one variable): escaped,
                    nothing when absent (as nginx's escape=json) */
} emit_t;

typedef struct {
    var_t var;
    emit_t mode;
    char *text; /* literal bytes as written (JSON already escaped), or the header name for
                   V_HTTP_HEADER (owned) */
    size_t len;
} op_t;

static const struct {
    const char *name;
    var_t var;
} vars[] = {
    {"remote_addr", V_REMOTE_ADDR},
    {"time_iso8601", V_TIME_ISO8601},
    {"time_local", V_TIME_LOCAL},
    {"request", V_REQUEST},
    {"request_method", V_METHOD},
    {"method", V_METHOD},
    {"uri", V_URI},
    {"status", V_STATUS},
    {"body_bytes_sent", V_BODY_BYTES_SENT},
    {"upstream_addr", V_UPSTREAM_ADDR},
    {"request_time", V_REQUEST_TIME},
    {"upstream_response_time", V_UPSTREAM_RESPONSE_TIME},
    {"host", V_HOST},
    {"scheme", V_SCHEME},
    {"ssl_protocol", V_SSL_PROTOCOL},
    {"ssl_cipher", V_SSL_CIPHER},
    {"ssl_server_name", V_SSL_SERVER_NAME},
    {"ssl_session_reused", V_SSL_SESSION_REUSED},
    {"ssl_client_s_dn", V_SSL_CLIENT_S_DN},
    /* #14 */
    {"realip_remote_addr", V_REALIP_REMOTE_ADDR},
    {"trace_id", V_TRACE_ID},
    {"span_id", V_SPAN_ID},
    {"parent_span_id", V_PARENT_SPAN_ID},
};

/* Variables whose value is a JSON number when a member's value is just that variable. */
static int is_number(var_t v)
{
    return v == V_STATUS || v == V_BODY_BYTES_SENT || v == V_REQUEST_TIME ||
           v == V_UPSTREAM_RESPONSE_TIME;
}

struct lp_accesslog_s {
    lp_logsink_t *sink; /* reference: where the writer thread puts the lines */
    int syslog;         /* the sink takes RFC 5424 records: a header, a NUL at the end */
    int severity;       /* of every record (syslog) */
    op_t *ops;          /* owned */
    size_t nops;
    /* Owned: whole lines waiting to be handed to the writer, and the line being written;
     * NULL until the first line. Only whole lines are handed over. */
    lp_logchunk_t *chunk;
    uint64_t flush_ms;
    uint32_t sample;        /* requests logged per 2^32 (UINT32_MAX: all) */
    int always_status;      /* sampled out, but logged when the status is at least this */
    uint64_t always_slower; /* ... or when it took longer (ns; 0: no rule) */
    uint64_t rng;           /* xorshift state of the sampling */
    char **members;         /* owned: the configured JSON member names, sorted (a plugin's
                               field of the same name is left out: one member per name) */
    size_t nmembers;
    time_t cached_sec;
    char iso[32], local[32];
};

/* ---------------------------------------------------------------------------- escaping */

static const char hex_upper[] = "0123456789ABCDEF";
static const char hex_lower[] = "0123456789abcdef";

/* 1 for the bytes both escapers copy as they are: printable ASCII but '"' and '\\'. */
static const unsigned char plain[256] = {
    [0x20 ... 0x21] = 1,
    [0x23 ... 0x5b] = 1,
    [0x5d ... 0x7e] = 1,
};

/* The length of the run of plain bytes at the start of s[0..n). */
static size_t plain_run(const unsigned char *s, size_t n)
{
    size_t i = 0;
    while (i < n && plain[s[i]])
        i++;
    return i;
}

size_t lp__accesslog_text_escape(char *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    char *o = out;
    while (p < end) {
        size_t run = plain_run(p, (size_t)(end - p));
        memcpy(o, p, run);
        o += run;
        p += run;
        if (p == end)
            break;
        unsigned char c = *p++;
        *o++ = '\\';
        *o++ = 'x';
        *o++ = hex_upper[c >> 4];
        *o++ = hex_upper[c & 15];
    }
    return (size_t)(o - out);
}

/* The length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong forms, no
 * surrogates, nothing above U+10FFFF), or 0 when s[0] does not start one. */
static size_t utf8_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0], lo = 0x80, hi = 0xbf;
    size_t len;
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        if (c == 0xe0)
            lo = 0xa0; /* overlong below */
        else if (c == 0xed)
            hi = 0x9f; /* U+D800-U+DFFF above */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        if (c == 0xf0)
            lo = 0x90; /* overlong below */
        else if (c == 0xf4)
            hi = 0x8f; /* beyond U+10FFFF above */
    } else {
        return 0; /* ASCII, a continuation byte, C0, C1 or F5-FF */
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xc0) != 0x80)
            return 0;
    return len;
}

/* RFC 8259's two-character escapes (the character after the backslash); the other bytes
 * below 0x20, and 0x7f, are written \u00xx. */
static const char json_short[128] = {
    ['\b'] = 'b', ['\f'] = 'f', ['\n'] = 'n',  ['\r'] = 'r',
    ['\t'] = 't', ['"'] = '"',  ['\\'] = '\\',
};

size_t lp__accesslog_json_escape(char *out, const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s, *end = p + n;
    char *o = out;
    while (p < end) {
        size_t run = plain_run(p, (size_t)(end - p));
        memcpy(o, p, run);
        o += run;
        p += run;
        if (p == end)
            break;
        unsigned char c = *p;
        if (c >= 0x80) {
            size_t ulen = utf8_len(p, (size_t)(end - p));
            if (ulen) {
                memcpy(o, p, ulen);
                o += ulen;
                p += ulen;
                continue;
            }
        }
        /* A byte that is not (part of) a well-formed character is written as the code
         * point of the same number, so the line stays valid JSON and shows the byte. */
        *o++ = '\\';
        if (c < 0x80 && json_short[c]) {
            *o++ = json_short[c];
        } else {
            memcpy(o, "u00", 3);
            o += 3;
            *o++ = hex_lower[c >> 4];
            *o++ = hex_lower[c & 15];
        }
        p++;
    }
    return (size_t)(o - out);
}

/* ---------------------------------------------------------------------------- templates */

typedef struct {
    op_t *ops; /* owned */
    size_t n, cap;
} prog_t;

static void prog_free(op_t *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ops[i].text);
    free(ops);
}

static op_t *prog_add(prog_t *p)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 16;
        op_t *grown = realloc(p->ops, cap * sizeof(*grown));
        if (!grown)
            return NULL;
        p->ops = grown;
        p->cap = cap;
    }
    op_t *op = &p->ops[p->n++];
    memset(op, 0, sizeof(*op));
    return op;
}

/* Literal bytes, escaped for a JSON string when `json`; joined to a literal before them. */
static int prog_literal(prog_t *p, const char *s, size_t n, int json)
{
    if (!n)
        return 0;
    char *tmp = NULL;
    if (json) {
        if (!(tmp = malloc(n * 6)))
            return LP_ENOMEM;
        n = lp__accesslog_json_escape(tmp, s, n);
        s = tmp;
    }
    op_t *last = p->n ? &p->ops[p->n - 1] : NULL;
    int rc = 0;
    if (last && last->var == V_LITERAL) {
        char *t = realloc(last->text, last->len + n);
        if (t) {
            memcpy(t + last->len, s, n);
            last->text = t;
            last->len += n;
        } else {
            rc = LP_ENOMEM;
        }
    } else {
        op_t *op = prog_add(p);
        if (op && (op->text = malloc(n))) {
            memcpy(op->text, s, n);
            op->len = n;
        } else {
            if (op)
                p->n--;
            rc = LP_ENOMEM;
        }
    }
    free(tmp);
    return rc;
}

/* The variable whose name starts at *pp (after the '$'); *pp moves past the name. */
static int parse_var(const char **pp, op_t *op, const char *where, char *err, size_t errlen)
{
    const char *s = *pp, *p = s;
    while (isalnum((unsigned char)*p) || *p == '_')
        p++;
    *pp = p;
    size_t len = (size_t)(p - s);
    if (len > 10 && strncmp(s, "log_field_", 10) == 0) {
        op->var = V_LOG_FIELD;
        op->len = len - 10;
        return (op->text = strndup(s + 10, op->len)) ? 0 : LP_ENOMEM;
    }
    if (len > 5 && strncmp(s, "http_", 5) == 0) {
        op->var = V_HTTP_HEADER;
        op->len = len - 5;
        if (!(op->text = strndup(s + 5, op->len)))
            return LP_ENOMEM;
        for (size_t i = 0; i < op->len; i++)
            if (op->text[i] == '_')
                op->text[i] = '-';
        return 0;
    }
    for (size_t i = 0; i < LP_ARRAY_LEN(vars); i++) {
        if (strlen(vars[i].name) == len && strncmp(vars[i].name, s, len) == 0) {
            op->var = vars[i].var;
            return 0;
        }
    }
    snprintf(err, errlen, "%s: unknown variable $%.*s", where, (int)len, s);
    return LP_ECONFIG;
}

/* Template `t` into ops: variables written in `mode`, literals escaped when `json`. */
static int prog_template(prog_t *p, const char *t, emit_t mode, int json, const char *where,
                         char *err, size_t errlen)
{
    while (*t) {
        int rc;
        if (*t == '$') {
            t++;
            op_t *op = prog_add(p);
            if (!op)
                return LP_ENOMEM;
            op->mode = mode;
            rc = parse_var(&t, op, where, err, errlen);
        } else {
            const char *s = t;
            while (*t && *t != '$')
                t++;
            rc = prog_literal(p, s, (size_t)(t - s), json);
        }
        if (rc)
            return rc;
    }
    return 0;
}

/* One member: `"name":` then a number, a string or null when the value is one variable,
 * otherwise a string of the template's text with the variables' values in it. */
static int prog_member(prog_t *p, const lp_log_field_t *m, int first, char *err, size_t errlen)
{
    char where[128];
    snprintf(where, sizeof(where), "log.json.%s", m->name);
    int rc = prog_literal(p, first ? "{\"" : ",\"", 2, 0);
    if (!rc)
        rc = prog_literal(p, m->name, strlen(m->name), 1);
    if (!rc)
        rc = prog_literal(p, "\":", 2, 0);
    const char *v = m->value, *end = v;
    if (!rc && v[0] == '$') {
        end++;
        while (isalnum((unsigned char)*end) || *end == '_')
            end++;
    }
    if (rc)
        return rc;
    if (end > v && !*end)
        return prog_template(p, v, M_JSON, 1, where, err, errlen);
    rc = prog_literal(p, "\"", 1, 0);
    if (!rc)
        rc = prog_template(p, v, M_JSON_PART, 1, where, err, errlen);
    if (!rc)
        rc = prog_literal(p, "\"", 1, 0);
    return rc;
}

/* A line ends with a newline, a syslog record with a NUL (end). */
static int compile(const lp_log_format_t *f, const char *end, op_t **out, size_t *nout, char *err,
                   size_t errlen)
{
    prog_t p = {0};
    int rc = 0;
    if (f->json) {
        rc = f->njson ? 0 : prog_literal(&p, "{", 1, 0);
        for (size_t i = 0; i < f->njson && !rc; i++)
            rc = prog_member(&p, &f->json[i], i == 0, err, errlen);
        op_t *fields = rc ? NULL : prog_add(&p);
        if (fields) {
            fields->var = V_LOG_FIELDS;
            fields->mode = M_JSON;
            fields->len = f->njson; /* members before: the first field needs a comma */
        } else if (!rc) {
            rc = LP_ENOMEM;
        }
        if (!rc)
            rc = prog_literal(&p, "}", 1, 0);
    } else {
        rc = prog_template(&p, f->text ? f->text : "", M_TEXT, 0, "log.format", err, errlen);
    }
    if (!rc)
        rc = prog_literal(&p, end, 1, 0);
    if (rc) {
        if (rc == LP_ENOMEM)
            snprintf(err, errlen, "access log: out of memory");
        prog_free(p.ops, p.n);
        return rc;
    }
    *out = p.ops;
    *nout = p.n;
    return 0;
}

int lp_accesslog_check_format(const lp_log_format_t *format, char *err, size_t errlen)
{
    op_t *ops;
    size_t n;
    int rc = compile(format, "\n", &ops, &n, err, errlen);
    if (rc)
        return rc;
    prog_free(ops, n);
    return 0;
}

/* ---------------------------------------------------------------------------- the log */

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

lp_accesslog_t *lp_accesslog_new(const lp_log_format_t *format, const lp_accesslog_opts_t *o,
                                 char *err, size_t errlen)
{
    lp_accesslog_t *log = calloc(1, sizeof(*log));
    if (!log) {
        snprintf(err, errlen, "access log: out of memory");
        return NULL;
    }
    log->syslog = lp_logsink_is_syslog(o->sink);
    log->severity = o->severity;
    if (compile(format, log->syslog ? "" : "\n", &log->ops, &log->nops, err, errlen)) {
        free(log);
        return NULL;
    }
    log->sink = lp_logsink_ref(o->sink);
    log->flush_ms = o->flush_ms;
    log->sample = o->sample;
    log->always_status = o->always_status;
    log->always_slower = o->always_slower_ms * 1000000ull;
    log->rng = uv_hrtime() ^ (uint64_t)(uintptr_t)log ^ 0x9e3779b97f4a7c15ull;
    if (format->json && format->njson) {
        log->members = calloc(format->njson, sizeof(char *));
        for (size_t i = 0; log->members && i < format->njson; i++)
            if ((log->members[i] = strdup(format->json[i].name)))
                log->nmembers++;
        if (log->members)
            qsort(log->members, log->nmembers, sizeof(char *), name_cmp);
    }
    return log;
}

lp_accesslog_t *lp_accesslog_open(const char *path, const lp_log_format_t *format, char *err,
                                  size_t errlen)
{
    if (!path)
        return NULL;
    lp_log_output_t out = {.kind = strcmp(path, "-") == 0 ? LP_LOGOUT_STDOUT : LP_LOGOUT_FILE,
                           .target = (char *)path,
                           .facility = 23,
                           .severity = 6};
    lp_accesslog_opts_t o = {.flush_ms = 100, .sample = UINT32_MAX, .severity = 6};
    char serr[256] = "";
    if (!(o.sink = lp_logsink_open(&out, "access", serr, sizeof(serr)))) {
        snprintf(err, errlen, "access log %s", serr);
        return NULL;
    }
    lp_accesslog_t *log = lp_accesslog_new(format, &o, err, errlen);
    lp_logsink_unref(o.sink);
    return log;
}

void lp_accesslog_close(lp_accesslog_t *log)
{
    if (!log)
        return;
    lp_accesslog_flush(log);
    lp_logchunk_free(log->chunk);
    lp_logsink_unref(log->sink);
    prog_free(log->ops, log->nops);
    for (size_t i = 0; i < log->nmembers; i++)
        free(log->members[i]);
    free(log->members);
    free(log);
}

/* Hands the first n bytes of the chunk (whole lines) to the writer and keeps the rest (the
 * line being written) in a chunk of its own. A chunk the writer refused (its queue is full:
 * the lines are counted as dropped) is emptied and reused. */
static void hand_over(lp_accesslog_t *log, size_t n, uint64_t now_ms)
{
    lp_logchunk_t *c = log->chunk;
    size_t rest = c->len - n;
    lp_logchunk_t *next = NULL;
    if (rest) {
        next = lp_logchunk_new(log->sink, rest > LP_ACCESSLOG_BUF ? rest : LP_ACCESSLOG_BUF);
        if (!next)
            return; /* no memory: keep everything (reserve() fails and drops the line) */
        memcpy(next->data, c->data + n, rest);
        next->len = rest;
        next->born_ms = now_ms;
        c->len = n;
    }
    if (lp_logw_submit(c) == 0) {
        log->chunk = next;
        return;
    }
    c->len = 0;
    c->nlines = 0;
    c->born_ms = now_ms;
    if (next) {
        log->chunk = next;
        lp_logchunk_free(c);
    }
}

void lp_accesslog_flush(lp_accesslog_t *log)
{
    if (log && log->chunk && log->chunk->len)
        hand_over(log, log->chunk->len, uv_hrtime() / 1000000u);
}

int64_t lp_accesslog_tick(lp_accesslog_t *log, uint64_t now_ms)
{
    if (!log || !log->chunk || !log->chunk->len)
        return -1;
    uint64_t due = log->chunk->born_ms + log->flush_ms;
    if (now_ms < due)
        return (int64_t)(due - now_ms);
    hand_over(log, log->chunk->len, now_ms);
    return -1;
}

/* Room for n more bytes of the line that starts at *line: hands over the whole lines
 * before it, then grows the chunk. -1 when the line would pass LP_ACCESSLOG_LINE_MAX or
 * memory ran out. */
static int reserve(lp_accesslog_t *log, size_t *line, size_t n, uint64_t now_ms)
{
    lp_logchunk_t *c = log->chunk;
    if (!c) {
        if (!(c = log->chunk =
                  lp_logchunk_new(log->sink, n > LP_ACCESSLOG_BUF ? n : LP_ACCESSLOG_BUF)))
            return -1;
        c->born_ms = now_ms;
    }
    if (!c->len)
        c->born_ms = now_ms;
    if (c->len + n <= c->cap)
        return 0;
    if (*line) {
        hand_over(log, *line, now_ms);
        *line = 0;
        if (!log->chunk &&
            !(log->chunk = lp_logchunk_new(log->sink, n > LP_ACCESSLOG_BUF ? n : LP_ACCESSLOG_BUF)))
            return -1;
        c = log->chunk;
        if (!c->len)
            c->born_ms = now_ms;
        if (c->len + n <= c->cap)
            return 0;
    }
    if (c->len + n > LP_ACCESSLOG_LINE_MAX)
        return -1;
    size_t cap = c->cap * 2;
    while (cap < c->len + n)
        cap *= 2;
    lp_logchunk_t *grown = realloc(c, sizeof(*c) + cap);
    if (!grown)
        return -1;
    grown->cap = cap;
    log->chunk = grown;
    return 0;
}

/* ---------------------------------------------------------------------------- one line */

static void refresh_time(lp_accesslog_t *log)
{
    time_t now = time(NULL);
    if (now == log->cached_sec)
        return;
    log->cached_sec = now;
    struct tm tm;
    gmtime_r(&now, &tm);
    strftime(log->iso, sizeof(log->iso), "%Y-%m-%dT%H:%M:%S+00:00", &tm);
    strftime(log->local, sizeof(log->local), "%d/%b/%Y:%H:%M:%S +0000", &tm);
}

/* A variable's value, in up to four pieces ($request); n 0 when absent. */
typedef struct {
    lp_str_t p[4];
    unsigned n;
    int type; /* $log_field_NAME: its LP_LOGF_* type (a JSON member's value), else 0 */
} val_t;

/* Room for value(): numbers and the longest TLS fact (a certificate subject). */
#define SCRATCH 512

static void one(val_t *v, const char *s, size_t n)
{
    v->p[v->n++] = (lp_str_t){s, n};
}

/* Seconds to the millisecond ("1.005"): a JSON number as it is. */
static void secs(val_t *v, char *scratch, uint64_t ns)
{
    size_t n = lp_u64_to_str(ns / 1000000000ull, 10, scratch);
    unsigned ms = (unsigned)(ns / 1000000ull % 1000ull);
    scratch[n++] = '.';
    scratch[n++] = (char)('0' + ms / 100);
    scratch[n++] = (char)('0' + ms / 10 % 10);
    scratch[n++] = (char)('0' + ms % 10);
    one(v, scratch, n);
}

static void u64(val_t *v, char *scratch, uint64_t x)
{
    one(v, scratch, lp_u64_to_str(x, 10, scratch));
}

/* The $ssl_* variables: absent on a plain connection (nginx logs an empty string there). */
static void tls_value(val_t *v, const lp_req_t *req, var_t var, char *scratch)
{
    static const int facts[] = {
        [V_SSL_PROTOCOL] = LP_TLS_F_PROTOCOL,
        [V_SSL_CIPHER] = LP_TLS_F_CIPHER,
        [V_SSL_SERVER_NAME] = LP_TLS_F_SNI,
        [V_SSL_SESSION_REUSED] = LP_TLS_F_RESUMED,
        [V_SSL_CLIENT_S_DN] = LP_TLS_F_CLIENT_SUBJECT,
    };
    size_t n = 0;
    const char *s = req->conn && req->conn->ep.tls
                        ? lp_tls_fact(req->conn->ep.tls, facts[var], scratch, SCRATCH, &n)
                        : NULL;
    if (s && var == V_SSL_SESSION_REUSED)
        s = s[0] == '1' ? "r" : ".", n = 1; /* nginx's spelling */
    if (s)
        one(v, s, n);
}

/* $trace_id, $span_id, $parent_span_id: absent without a trace (tracing off, a head that
 * never parsed) and $parent_span_id without an accepted parent. */
static void trace_value(val_t *v, const lp_req_t *req, var_t var, char *scratch)
{
    static const uint8_t none[8] = {0};
    const lp_trace_t *t = &req->trace;
    if (!t->on)
        return;
    if (var == V_TRACE_ID) {
        lp_trace_hex(scratch, t->trace_id, 16);
        one(v, scratch, 32);
    } else if (var == V_SPAN_ID) {
        lp_trace_hex(scratch, t->span_id, 8);
        one(v, scratch, 16);
    } else if (memcmp(t->parent_id, none, 8) != 0) {
        lp_trace_hex(scratch, t->parent_id, 8);
        one(v, scratch, 16);
    }
}

static void value(lp_accesslog_t *log, const lp_req_t *req, const op_t *op, uint64_t now,
                  char *scratch, val_t *v)
{
    const lp_h1_t *h = &req->h1;
    v->n = 0;
    v->type = 0;
    switch (op->var) {
    case V_LITERAL:
        break;
    case V_REMOTE_ADDR:
        if (req->client_ip[0])
            one(v, req->client_ip, strlen(req->client_ip));
        else if (req->conn) /* not formatted yet (the log is const): format it here */
            one(v, scratch, lp_conn_ip_text(req->conn, scratch));
        break;
    case V_REALIP_REMOTE_ADDR:
        if (req->peer_ip[0])
            one(v, req->peer_ip, strlen(req->peer_ip));
        else if (req->conn)
            one(v, scratch, lp_conn_peer_text(req->conn, scratch));
        break;
    case V_TIME_ISO8601:
        refresh_time(log);
        one(v, log->iso, strlen(log->iso));
        break;
    case V_TIME_LOCAL:
        refresh_time(log);
        one(v, log->local, strlen(log->local));
        break;
    case V_REQUEST: {
        /* A head refused before it parsed has no method (req->method is 0, llhttp's
         * DELETE) and maybe no version: no request line to show. */
        if (!h->url.len || !(req->flags & LP_RF_PARSED))
            break;
        const char *m = llhttp_method_name(req->method);
        one(v, m, strlen(m));
        one(v, " ", 1);
        one(v, h->url.base, h->url.len);
        if (req->flags & LP_RF_H2)
            one(v, " HTTP/2.0", 9);
        else
            one(v, req->minor ? " HTTP/1.1" : " HTTP/1.0", 9);
        break;
    }
    case V_METHOD: {
        if (!(req->flags & LP_RF_PARSED))
            break;
        const char *m = llhttp_method_name(req->method);
        one(v, m, strlen(m));
        break;
    }
    case V_URI:
        if (h->path.base)
            one(v, h->path.base, h->path.len);
        break;
    case V_STATUS:
        u64(v, scratch, (uint64_t)req->resp.sent_status);
        break;
    case V_BODY_BYTES_SENT:
        u64(v, scratch, req->resp.body_out);
        break;
    case V_UPSTREAM_ADDR:
        if (req->upstream && req->try.target >= 0)
            one(v, req->try.target_addr, strlen(req->try.target_addr));
        break;
    case V_REQUEST_TIME:
        secs(v, scratch, now - req->t_start);
        break;
    case V_UPSTREAM_RESPONSE_TIME:
        if (req->t_upstream && req->t_upstream_head)
            secs(v, scratch, now - req->t_upstream);
        break;
    case V_HOST:
        if (h->host.base)
            one(v, h->host.base, h->host.len);
        break;
    case V_SCHEME:
        if (lp_req_over_tls(req))
            one(v, "https", 5);
        else
            one(v, "http", 4);
        break;
    case V_SSL_PROTOCOL:
    case V_SSL_CIPHER:
    case V_SSL_SERVER_NAME:
    case V_SSL_SESSION_REUSED:
    case V_SSL_CLIENT_S_DN:
        tls_value(v, req, op->var, scratch);
        break;
    case V_TRACE_ID:
    case V_SPAN_ID:
    case V_PARENT_SPAN_ID:
        trace_value(v, req, op->var, scratch);
        break;
    case V_HTTP_HEADER: {
        const lp_header_t *hd = lp_h1_find(h, op->text, op->len);
        if (hd)
            one(v, hd->value.base ? hd->value.base : "", hd->value.len);
        break;
    }
    case V_LOG_FIELD: {
        lp_logfield_t f;
        if (lp_logfields_get(&req->log_fields, op->text, op->len, &f)) {
            one(v, f.value.base ? f.value.base : "", f.value.len);
            v->type = f.type;
        }
        break;
    }
    case V_LOG_FIELDS:
        break;
    }
}

/* Sampling (log.sample and the always_* rules): 1 when this request's line is written. No
 * Lua and no lock: a per-log xorshift generator and two comparisons. */
static int sampled_in(lp_accesslog_t *log, const lp_req_t *req, uint64_t now)
{
    if (log->sample == UINT32_MAX)
        return 1;
    uint64_t x = log->rng;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    log->rng = x;
    if ((uint32_t)(x >> 32) < log->sample)
        return 1;
    if (log->always_status && req->resp.sent_status >= log->always_status)
        return 1;
    return log->always_slower && now - req->t_start > log->always_slower;
}

/* The plugins' fields (req:log_field) as members of the JSON object; a name a configured
 * member has is left out (one member per name). `more`: members came before. */
static int write_fields(lp_accesslog_t *log, const lp_req_t *req, size_t *line, int more,
                        uint64_t now_ms)
{
    lp_logfield_t f;
    for (size_t pos = 0, next; (next = lp_logfields_next(&req->log_fields, pos, &f)); pos = next) {
        char name[LP_LOG_FIELD_NAME_MAX + 1];
        memcpy(name, f.name.base, f.name.len);
        name[f.name.len] = 0;
        const char *key = name;
        if (log->nmembers && bsearch(&key, log->members, log->nmembers, sizeof(char *), name_cmp))
            continue;
        /* ,"name": then the value escaped (6 bytes a byte at worst) and quoted */
        if (reserve(log, line, f.name.len + f.value.len * 6 + 8, now_ms))
            return -1;
        lp_logchunk_t *c = log->chunk;
        char *o = c->data + c->len;
        if (more)
            *o++ = ',';
        more = 1;
        *o++ = '"';
        memcpy(o, f.name.base, f.name.len);
        o += f.name.len;
        *o++ = '"';
        *o++ = ':';
        if (f.type == LP_LOGF_STRING) {
            *o++ = '"';
            o += lp__accesslog_json_escape(o, f.value.base, f.value.len);
            *o++ = '"';
        } else {
            memcpy(o, f.value.base, f.value.len); /* a number's text, true or false */
            o += f.value.len;
        }
        c->len = (size_t)(o - c->data);
    }
    return 0;
}

void lp_accesslog_write(lp_accesslog_t *log, const lp_req_t *req)
{
    if (!log)
        return;
    uint64_t now = uv_hrtime(), now_ms = now / 1000000u;
    if (!sampled_in(log, req, now))
        return;
    size_t line = log->chunk ? log->chunk->len : 0;
    char scratch[SCRATCH];
    if (log->syslog) {
        if (reserve(log, &line, LP_SYSLOG_HEADER_MAX, now_ms))
            goto drop;
        lp_logchunk_t *c = log->chunk;
        c->len += lp_logsink_syslog_header(log->sink, log->severity, c->data + c->len);
    }
    for (size_t i = 0; i < log->nops; i++) {
        const op_t *op = &log->ops[i];
        if (op->var == V_LITERAL) {
            if (reserve(log, &line, op->len, now_ms))
                goto drop;
            memcpy(log->chunk->data + log->chunk->len, op->text, op->len);
            log->chunk->len += op->len;
            continue;
        }
        if (op->var == V_LOG_FIELDS) {
            if (write_fields(log, req, &line, op->len != 0, now_ms))
                goto drop;
            continue;
        }
        val_t v;
        value(log, req, op, now, scratch, &v);
        size_t total = 0;
        for (unsigned k = 0; k < v.n; k++)
            total += v.p[k].len;
        /* Room for the worst case: every byte escaped, plus quotes or "null". */
        if (reserve(log, &line, total * (op->mode == M_TEXT ? 4 : 6) + 4, now_ms))
            goto drop;
        char *base = log->chunk->data, *o = base + log->chunk->len;
        if (op->mode == M_TEXT) {
            if (!total)
                *o++ = '-';
            for (unsigned k = 0; k < v.n; k++)
                o += lp__accesslog_text_escape(o, v.p[k].base, v.p[k].len);
        } else if (op->mode == M_JSON && !v.n) {
            memcpy(o, "null", 4);
            o += 4;
        } else if (op->mode == M_JSON &&
                   (is_number(op->var) || v.type == LP_LOGF_NUMBER || v.type == LP_LOGF_BOOL)) {
            memcpy(o, v.p[0].base, v.p[0].len); /* digits from u64() or secs(), a field's */
            o += v.p[0].len;
        } else {
            if (op->mode == M_JSON)
                *o++ = '"';
            for (unsigned k = 0; k < v.n; k++)
                o += lp__accesslog_json_escape(o, v.p[k].base, v.p[k].len);
            if (op->mode == M_JSON)
                *o++ = '"';
        }
        log->chunk->len = (size_t)(o - base);
    }
    log->chunk->nlines++;
    if (log->chunk->len >= LP_ACCESSLOG_BUF)
        hand_over(log, log->chunk->len, now_ms);
    return;
drop:
    if (log->chunk)
        log->chunk->len = line;
    lp_logw_count_dropped(1);
    lp_log_warn("access log: a line longer than %d MiB was dropped",
                LP_ACCESSLOG_LINE_MAX / (1024 * 1024));
}
