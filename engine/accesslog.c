#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include "accesslog.h"
#include "tls.h"

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
} var_t;

typedef struct {
    var_t var;
    char *text; /* literal text, or the header name for V_HTTP_HEADER (owned) */
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
};

struct lp_accesslog_s {
    int fd;
    int owns_fd;
    op_t *ops; /* owned */
    size_t nops;
    char *buf; /* owned: lines waiting for the before-sleep flush */
    size_t len, cap;
    time_t cached_sec;
    char iso[32], local[32];
};

static void free_ops(op_t *ops, size_t n)
{
    for (size_t i = 0; i < n; i++)
        free(ops[i].text);
    free(ops);
}

static int compile(const char *f, op_t **out, size_t *nout, char *err, size_t errlen)
{
    size_t cap = 16, n = 0;
    op_t *ops = calloc(cap, sizeof(*ops));
    if (!ops)
        return -1;
    const char *p = f;
    while (*p) {
        if (n + 1 >= cap) {
            op_t *grown = realloc(ops, cap * 2 * sizeof(*ops));
            if (!grown) {
                free_ops(ops, n);
                return -1;
            }
            ops = grown;
            cap *= 2;
        }
        op_t *op = &ops[n];
        memset(op, 0, sizeof(*op));
        if (*p == '$') {
            const char *s = ++p;
            while (isalnum((unsigned char)*p) || *p == '_')
                p++;
            size_t len = (size_t)(p - s);
            int found = 0;
            if (len > 5 && strncmp(s, "http_", 5) == 0) {
                op->var = V_HTTP_HEADER;
                op->len = len - 5;
                op->text = strndup(s + 5, op->len);
                for (size_t i = 0; i < op->len; i++)
                    if (op->text[i] == '_')
                        op->text[i] = '-';
                found = 1;
            }
            for (size_t i = 0; !found && i < LP_ARRAY_LEN(vars); i++) {
                if (strlen(vars[i].name) == len && strncmp(vars[i].name, s, len) == 0) {
                    op->var = vars[i].var;
                    found = 1;
                }
            }
            if (!found) {
                snprintf(err, errlen, "log.format: unknown variable $%.*s", (int)len, s);
                free_ops(ops, n);
                return -1;
            }
        } else {
            const char *s = p;
            while (*p && *p != '$')
                p++;
            op->var = V_LITERAL;
            op->len = (size_t)(p - s);
            op->text = strndup(s, op->len);
        }
        n++;
    }
    *out = ops;
    *nout = n;
    return 0;
}

int lp_accesslog_check_format(const char *format, char *err, size_t errlen)
{
    op_t *ops;
    size_t n;
    if (compile(format, &ops, &n, err, errlen))
        return LP_ECONFIG;
    free_ops(ops, n);
    return 0;
}

lp_accesslog_t *lp_accesslog_open(const char *path, const char *format, char *err, size_t errlen)
{
    if (!path)
        return NULL;
    lp_accesslog_t *log = calloc(1, sizeof(*log));
    if (!log)
        return NULL;
    if (compile(format, &log->ops, &log->nops, err, errlen)) {
        free(log);
        return NULL;
    }
    if (strcmp(path, "-") == 0) {
        log->fd = STDOUT_FILENO;
    } else {
        log->fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
        if (log->fd < 0) {
            snprintf(err, errlen, "access log %s: %s", path, strerror(errno));
            free_ops(log->ops, log->nops);
            free(log);
            return NULL;
        }
        log->owns_fd = 1;
    }
    log->cap = 64 * 1024;
    log->buf = malloc(log->cap);
    if (!log->buf) {
        lp_accesslog_close(log);
        return NULL;
    }
    return log;
}

void lp_accesslog_close(lp_accesslog_t *log)
{
    if (!log)
        return;
    lp_accesslog_flush(log);
    if (log->owns_fd)
        close(log->fd);
    free_ops(log->ops, log->nops);
    free(log->buf);
    free(log);
}

void lp_accesslog_flush(lp_accesslog_t *log)
{
    if (!log || !log->len)
        return;
    size_t off = 0;
    while (off < log->len) {
        ssize_t w = write(log->fd, log->buf + off, log->len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            break; /* a log that cannot be written must not stop the proxy */
        off += (size_t)w;
    }
    log->len = 0;
}

static void put(lp_accesslog_t *log, const char *s, size_t n)
{
    if (log->len + n > log->cap) {
        lp_accesslog_flush(log);
        if (n > log->cap)
            n = log->cap;
    }
    memcpy(log->buf + log->len, s, n);
    log->len += n;
}

/* Bytes that could forge log lines (control characters, quotes) are escaped. */
static void put_escaped(lp_accesslog_t *log, const char *s, size_t n)
{
    if (!s || !n) {
        put(log, "-", 1);
        return;
    }
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == '"' || c == '\\' || c >= 0x7f) {
            char esc[5];
            snprintf(esc, sizeof(esc), "\\x%02X", c);
            put(log, esc, 4);
        } else {
            put(log, (const char *)&c, 1);
        }
    }
}

static void put_u64(lp_accesslog_t *log, uint64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
    put(log, tmp, (size_t)n);
}

static void put_secs(lp_accesslog_t *log, uint64_t ns)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "%llu.%03llu", (unsigned long long)(ns / 1000000000ull),
                     (unsigned long long)(ns / 1000000ull % 1000ull));
    put(log, tmp, (size_t)n);
}

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

/* The $ssl_* variables, "-" on a plain connection (nginx logs an empty string there). */
static void put_tls(lp_accesslog_t *log, const lp_req_t *req, int var)
{
    static const int facts[] = {
        [V_SSL_PROTOCOL] = LP_TLS_F_PROTOCOL,
        [V_SSL_CIPHER] = LP_TLS_F_CIPHER,
        [V_SSL_SERVER_NAME] = LP_TLS_F_SNI,
        [V_SSL_SESSION_REUSED] = LP_TLS_F_RESUMED,
        [V_SSL_CLIENT_S_DN] = LP_TLS_F_CLIENT_SUBJECT,
    };
    char subject[512];
    size_t n = 0;
    const char *v = req->conn->ep.tls
                        ? lp_tls_fact(req->conn->ep.tls, facts[var], subject, sizeof(subject), &n)
                        : NULL;
    if (v && var == V_SSL_SESSION_REUSED)
        v = v[0] == '1' ? "r" : ".", n = 1; /* nginx's spelling */
    if (v)
        put_escaped(log, v, n);
    else
        put(log, "-", 1);
}

void lp_accesslog_write(lp_accesslog_t *log, const lp_req_t *req)
{
    if (!log)
        return;
    const lp_h1_t *h = &req->h1;
    uint64_t now = uv_hrtime();
    for (size_t i = 0; i < log->nops; i++) {
        const op_t *op = &log->ops[i];
        switch (op->var) {
        case V_LITERAL:
            put(log, op->text, op->len);
            break;
        case V_REMOTE_ADDR:
            put(log, req->conn->client_ip, strlen(req->conn->client_ip));
            break;
        case V_TIME_ISO8601:
            refresh_time(log);
            put(log, log->iso, strlen(log->iso));
            break;
        case V_TIME_LOCAL:
            refresh_time(log);
            put(log, log->local, strlen(log->local));
            break;
        case V_REQUEST:
            if (!h->url.len) {
                put(log, "-", 1);
                break;
            }
            put(log, llhttp_method_name(req->method), strlen(llhttp_method_name(req->method)));
            put(log, " ", 1);
            put_escaped(log, h->url.base, h->url.len);
            put(log, req->minor ? " HTTP/1.1" : " HTTP/1.0", 9);
            break;
        case V_METHOD:
            put(log, llhttp_method_name(req->method), strlen(llhttp_method_name(req->method)));
            break;
        case V_URI:
            put_escaped(log, h->path.base, h->path.len);
            break;
        case V_STATUS:
            put_u64(log, (uint64_t)req->status);
            break;
        case V_BODY_BYTES_SENT:
            put_u64(log, req->resp_body_out);
            break;
        case V_UPSTREAM_ADDR:
            if (req->upstream && req->target >= 0)
                put_escaped(log, req->target_addr, strlen(req->target_addr));
            else
                put(log, "-", 1);
            break;
        case V_REQUEST_TIME:
            put_secs(log, now - req->t_start);
            break;
        case V_UPSTREAM_RESPONSE_TIME:
            if (req->t_upstream && req->t_upstream_head)
                put_secs(log, now - req->t_upstream);
            else
                put(log, "-", 1);
            break;
        case V_HOST:
            put_escaped(log, h->host.base, h->host.len);
            break;
        case V_SCHEME:
            put(log, req->conn->ep.tls ? "https" : "http", req->conn->ep.tls ? 5 : 4);
            break;
        case V_SSL_PROTOCOL:
        case V_SSL_CIPHER:
        case V_SSL_SERVER_NAME:
        case V_SSL_SESSION_REUSED:
        case V_SSL_CLIENT_S_DN:
            put_tls(log, req, op->var);
            break;
        case V_HTTP_HEADER: {
            const lp_header_t *hd = lp_h1_find(h, op->text, op->len);
            put_escaped(log, hd ? hd->value.base : NULL, hd ? hd->value.len : 0);
            break;
        }
        }
    }
    put(log, "\n", 1);
}
