/* One HTTP/1.1 POST to etcd's JSON gateway over a TCP socket (TLS for https://, with the
 * context tls.c builds), waited on with poll so every wait is bounded, the response parsed
 * by llhttp. Used by the etcd thread (etcd.c) and `luaproxy push`, never by a loop thread:
 * blocking here holds nobody but the caller. */
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <fcntl.h>
#include <pthread.h>
#include <llhttp.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include "common.h"
#include "etcd.h"
#include "lua_api.h"
#include "tls.h"

int lp_etcd_ep_parse(const char *url, lp_etcd_ep_t *ep, char *err, size_t errlen)
{
    const char *hp = strncmp(url, "http://", 7) == 0    ? url + 7
                     : strncmp(url, "https://", 8) == 0 ? url + 8
                                                        : NULL;
    const char *colon = hp ? strrchr(hp, ':') : NULL;
    if (!hp || !colon || colon == hp || (size_t)(colon - hp) >= sizeof(ep->host) ||
        strlen(colon + 1) >= sizeof(ep->port) || !colon[1] || strchr(colon, '/')) {
        snprintf(err, errlen, "%s: expected http://HOST:PORT or https://HOST:PORT", url);
        return -1;
    }
    ep->https = url[4] == 's';
    ep->tls = NULL;
    size_t hl = (size_t)(colon - hp);
    if (hp[0] == '[' && hl > 2 && hp[hl - 1] == ']') { /* [::1]:2379 */
        memcpy(ep->host, hp + 1, hl - 2);
        ep->host[hl - 2] = 0;
    } else {
        memcpy(ep->host, hp, hl);
        ep->host[hl] = 0;
    }
    snprintf(ep->port, sizeof(ep->port), "%s", colon + 1);
    return 0;
}

/* Waits for fd (events), or wake_fd readable: 1 ready, 0 timed out, -1 woken. */
static int wait_fd(int fd, short events, int timeout_ms, int wake_fd)
{
    struct pollfd p[2] = {{.fd = fd, .events = events}, {.fd = wake_fd, .events = POLLIN}};
    for (;;) {
        int n = poll(p, wake_fd >= 0 ? 2 : 1, timeout_ms);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return 0;
        if (wake_fd >= 0 && (p[1].revents & POLLIN))
            return -1;
        return 1;
    }
}

/* ---- name resolution with a deadline ----
 * getaddrinfo cannot be given a timeout and may wait on DNS for as long as the resolver's
 * own retries last. So a name (not a numeric address) is resolved on a detached thread
 * of its own, and the caller waits for its answer at most timeout_ms (or until wake_fd):
 * whichever of the two is last to let go of the request frees it. */

lp_etcd_resolver_fn lp_etcd_resolver = getaddrinfo;

typedef struct {
    uv_mutex_t lock;
    int refs;    /* guarded by lock: 2 (the caller and the thread), the last frees */
    int pipe[2]; /* the thread writes a byte when done; closed by whoever frees */
    char host[256], port[16];
    int rc;               /* getaddrinfo's result, set by the thread before it lets go */
    struct addrinfo *res; /* owned until the caller takes it (then the caller's) */
} resolve_t;

static void resolve_release(resolve_t *r)
{
    uv_mutex_lock(&r->lock);
    int last = --r->refs == 0;
    uv_mutex_unlock(&r->lock);
    if (!last)
        return;
    if (r->res)
        freeaddrinfo(r->res);
    close(r->pipe[0]);
    close(r->pipe[1]);
    uv_mutex_destroy(&r->lock);
    free(r);
}

static void *resolve_thread(void *arg)
{
    resolve_t *r = arg;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = lp_etcd_resolver(r->host, r->port, &hints, &res);
    uv_mutex_lock(&r->lock);
    r->rc = rc;
    r->res = rc ? NULL : res;
    uv_mutex_unlock(&r->lock);
    char b = 1;
    if (write(r->pipe[1], &b, 1) < 0) {
        /* the pipe is ours until we let go: cannot fail but for a full pipe, and it is empty */
    }
    resolve_release(r);
    return NULL;
}

int lp_etcd_resolve(const char *host, const char *port, int timeout_ms, int wake_fd,
                    struct addrinfo **out, char *err, size_t errlen)
{
    *out = NULL;
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICHOST};
    if (getaddrinfo(host, port, &hints, out) == 0)
        return 0; /* an address: nothing to wait for */
    resolve_t *r = calloc(1, sizeof(*r));
    if (!r || pipe2(r->pipe, O_CLOEXEC | O_NONBLOCK)) {
        free(r);
        snprintf(err, errlen, "%s:%s: cannot resolve: %s", host, port, strerror(errno));
        return LP_EIO;
    }
    uv_mutex_init(&r->lock);
    r->refs = 2;
    snprintf(r->host, sizeof(r->host), "%s", host);
    snprintf(r->port, sizeof(r->port), "%s", port);
    pthread_attr_t attr;
    pthread_t th;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&attr, 256 * 1024);
    int trc = pthread_create(&th, &attr, resolve_thread, r);
    pthread_attr_destroy(&attr);
    if (trc) {
        r->refs = 1;
        resolve_release(r);
        snprintf(err, errlen, "%s:%s: cannot resolve: no thread: %s", host, port, strerror(trc));
        return LP_EIO;
    }
    int w = wait_fd(r->pipe[0], POLLIN, timeout_ms, wake_fd);
    int rc = 0;
    uv_mutex_lock(&r->lock);
    if (w == 1 && r->rc == 0) {
        *out = r->res;
        r->res = NULL;
    } else if (w == 1) {
        snprintf(err, errlen, "%s:%s: %s", host, port, gai_strerror(r->rc));
        rc = LP_EIO;
    } else if (w == 0) {
        snprintf(err, errlen, "%s:%s: name resolution timed out after %d ms", host, port,
                 timeout_ms);
        rc = LP_EIO;
    } else {
        snprintf(err, errlen, "woken");
        rc = LP_EIO;
    }
    uv_mutex_unlock(&r->lock);
    resolve_release(r);
    return rc;
}

/* ---- one connection: plain TCP or TLS over a non-blocking socket ---- */

typedef struct {
    int fd;
    SSL *ssl;               /* owned; NULL for http:// */
    const lp_etcd_ep_t *ep; /* borrowed: the caller's */
} conn_t;

/* OpenSSL's reason for the last failure of c, for a log line a user can act on. */
static void tls_reason(conn_t *c, const char *what, char *err, size_t errlen)
{
    long vr = SSL_get_verify_result(c->ssl);
    unsigned long e = ERR_peek_last_error();
    char reason[200] = "";
    if (e)
        ERR_error_string_n(e, reason, sizeof(reason));
    const char *r = strstr(reason, "::");
    ERR_clear_error();
    if (vr != X509_V_OK)
        snprintf(err, errlen, "%s:%s: %s: certificate not accepted: %s", c->ep->host, c->ep->port,
                 what, X509_verify_cert_error_string(vr));
    else
        snprintf(err, errlen, "%s:%s: %s: %s", c->ep->host, c->ep->port, what,
                 r           ? r + 2
                 : reason[0] ? reason
                             : "connection closed");
}

/* Waits until the TLS call that returned ret may go on: 1, 0 timed out, -1 woken, -2 a
 * failure (err set). */
static int tls_wait(conn_t *c, int ret, const char *what, int timeout_ms, int wake_fd, char *err,
                    size_t errlen)
{
    int e = SSL_get_error(c->ssl, ret);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
        int w = wait_fd(c->fd, e == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT, timeout_ms, wake_fd);
        if (w == 0)
            snprintf(err, errlen, "%s:%s: %s timed out", c->ep->host, c->ep->port, what);
        return w;
    }
    tls_reason(c, what, err, errlen);
    return -2;
}

static int conn_open(conn_t *c, const lp_etcd_ep_t *ep, int timeout_ms, int wake_fd, char *err,
                     size_t errlen)
{
    c->fd = -1;
    c->ssl = NULL;
    c->ep = ep;
    struct addrinfo *res = NULL;
    int rc = lp_etcd_resolve(ep->host, ep->port, timeout_ms, wake_fd, &res, err, errlen);
    if (rc)
        return rc;
    int fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int cn = connect(fd, a->ai_addr, a->ai_addrlen), w = 0;
        int inprogress = cn < 0 && errno == EINPROGRESS;
        if (inprogress)
            w = wait_fd(fd, POLLOUT, timeout_ms, wake_fd);
        if (w < 0) { /* woken: not a failure of the endpoint (the caller tells them apart) */
            close(fd);
            freeaddrinfo(res);
            snprintf(err, errlen, "woken");
            return LP_EIO;
        }
        if (inprogress && w == 1) {
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            cn = soerr ? -1 : 0;
            errno = soerr ? soerr : ETIMEDOUT;
        } else if (inprogress) {
            errno = ETIMEDOUT;
        }
        if (cn == 0)
            break;
        snprintf(err, errlen, "%s:%s: %s", ep->host, ep->port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    if (fd < 0)
        return LP_EIO;
    c->fd = fd;
    if (!ep->https)
        return 0;
    if (!ep->tls) {
        snprintf(err, errlen, "%s:%s: https without TLS settings", ep->host, ep->port);
        return LP_EIO;
    }
    ERR_clear_error();
    c->ssl = lp_tls_client_ssl(ep->tls, ep->host);
    if (!c->ssl || !SSL_set_fd(c->ssl, fd)) {
        snprintf(err, errlen, "%s:%s: out of memory", ep->host, ep->port);
        return LP_ENOMEM;
    }
    for (;;) {
        int r = SSL_connect(c->ssl);
        if (r == 1)
            return 0;
        int w = tls_wait(c, r, "TLS handshake", timeout_ms, wake_fd, err, errlen);
        if (w != 1) {
            if (w == -1)
                snprintf(err, errlen, "woken");
            return LP_EIO;
        }
    }
}

static void conn_close(conn_t *c)
{
    SSL_free(c->ssl);
    if (c->fd >= 0)
        close(c->fd);
}

/* Sends every byte: 0, or -1 with err. */
static int conn_send(conn_t *c, const char *p, size_t n, int timeout_ms, char *err, size_t errlen)
{
    size_t off = 0;
    while (off < n) {
        if (c->ssl) {
            int w = SSL_write(c->ssl, p + off, (int)(n - off));
            if (w > 0) {
                off += (size_t)w;
                continue;
            }
            if (tls_wait(c, w, "send", timeout_ms, -1, err, errlen) != 1)
                return -1;
            continue;
        }
        ssize_t w = send(c->fd, p + off, n - off, MSG_NOSIGNAL);
        if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
            if (wait_fd(c->fd, POLLOUT, timeout_ms, -1) != 1) {
                snprintf(err, errlen, "%s:%s: send timed out", c->ep->host, c->ep->port);
                return -1;
            }
            continue;
        }
        if (w < 0) {
            snprintf(err, errlen, "%s:%s: %s", c->ep->host, c->ep->port, strerror(errno));
            return -1;
        }
        off += (size_t)w;
    }
    return 0;
}

/* Bytes received (> 0), 0 at the end of the stream, -1 failure, -2 timed out, -3 woken. */
static ssize_t conn_recv(conn_t *c, char *buf, size_t cap, int timeout_ms, int wake_fd, char *err,
                         size_t errlen)
{
    for (;;) {
        if (c->ssl) {
            /* Bytes OpenSSL has decrypted or read ahead do not make the socket readable. */
            int r = SSL_read(c->ssl, buf, (int)cap);
            if (r > 0)
                return r;
            int e = SSL_get_error(c->ssl, r);
            if (e == SSL_ERROR_ZERO_RETURN || (e == SSL_ERROR_SYSCALL && ERR_peek_error() == 0)) {
                ERR_clear_error();
                return 0; /* close_notify, or etcd closing without one: the end either way */
            }
            int w = tls_wait(c, r, "receive", timeout_ms, wake_fd, err, errlen);
            if (w == 1)
                continue;
            return w == 0 ? -2 : w == -1 ? -3 : -1;
        }
        int w = wait_fd(c->fd, POLLIN, timeout_ms, wake_fd);
        if (w != 1)
            return w == 0 ? -2 : -3;
        ssize_t n = recv(c->fd, buf, cap, 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0)
            snprintf(err, errlen, "%s:%s: %s", c->ep->host, c->ep->port, strerror(errno));
        return n < 0 ? -1 : n;
    }
}

typedef struct {
    lp_etcd_body_cb cb;
    void *data;
    int done;    /* the message is complete */
    int stopped; /* cb asked to stop */
} parse_t;

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    parse_t *ps = p->data;
    if (ps->cb && ps->cb(ps->data, at, n)) {
        ps->stopped = 1;
        return HPE_USER;
    }
    return 0;
}

static int on_done(llhttp_t *p)
{
    ((parse_t *)p->data)->done = 1;
    return HPE_PAUSED;
}

int lp_etcd_post(const lp_etcd_ep_t *ep, const char *path, const char *token, const char *body,
                 int timeout_ms, int wake_fd, lp_etcd_body_cb cb, void *data, char *err,
                 size_t errlen)
{
    int connect_ms = timeout_ms < 0 ? 2000 : timeout_ms;
    conn_t c;
    int orc = conn_open(&c, ep, connect_ms, wake_fd, err, errlen);
    if (orc) {
        conn_close(&c);
        return !strcmp(err, "woken") ? 0 : orc; /* woken: not an HTTP status, as below */
    }
    size_t blen = strlen(body);
    char head[1024];
    int hn = snprintf(head, sizeof(head),
                      "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n%s%s%sConnection: close\r\n\r\n",
                      path, ep->host, ep->port, blen, token ? "Authorization: " : "",
                      token ? token : "", token ? "\r\n" : "");
    int rc = LP_EIO;
    if (conn_send(&c, head, (size_t)hn, connect_ms, err, errlen) ||
        conn_send(&c, body, blen, connect_ms, err, errlen))
        goto out;
    llhttp_settings_t settings;
    llhttp_settings_init(&settings);
    settings.on_body = on_body;
    settings.on_message_complete = on_done;
    llhttp_t parser;
    llhttp_init(&parser, HTTP_RESPONSE, &settings);
    parse_t ps = {cb, data, 0, 0};
    parser.data = &ps;
    char buf[16384];
    for (;;) {
        ssize_t n = conn_recv(&c, buf, sizeof(buf), timeout_ms, wake_fd, err, errlen);
        if (n == -3) {
            rc = 0; /* woken: not an HTTP status */
            snprintf(err, errlen, "woken");
            goto out;
        }
        if (n == -2) {
            snprintf(err, errlen, "%s:%s: timed out", ep->host, ep->port);
            goto out;
        }
        if (n < 0)
            goto out;
        llhttp_errno_t e =
            n == 0 ? llhttp_finish(&parser) : llhttp_execute(&parser, buf, (size_t)n);
        if (ps.stopped || ps.done || e == HPE_PAUSED) {
            rc = (int)parser.status_code;
            goto out;
        }
        if (e != HPE_OK) {
            snprintf(err, errlen, "%s:%s: bad response: %s", ep->host, ep->port,
                     llhttp_errno_name(e));
            goto out;
        }
        if (n == 0) {
            snprintf(err, errlen, "%s:%s: connection closed", ep->host, ep->port);
            goto out;
        }
    }
out:
    conn_close(&c);
    return rc;
}

typedef struct {
    char *p;
    size_t n, cap;
} sbuf_t;

static int collect(void *data, const char *p, size_t n)
{
    sbuf_t *b = data;
    if (b->n + n + 1 > b->cap) {
        size_t cap = (b->n + n + 1) * 2;
        char *q = realloc(b->p, cap);
        if (!q)
            return 1;
        b->p = q;
        b->cap = cap;
    }
    memcpy(b->p + b->n, p, n);
    b->n += n;
    b->p[b->n] = 0;
    return 0;
}

int lp_etcd_call(const lp_etcd_ep_t *ep, const char *path, const char *token, json_t *req,
                 int timeout_ms, int wake_fd, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    char *body = json_dumps(req, JSON_COMPACT);
    if (!body) {
        snprintf(err, errlen, "out of memory");
        return LP_ENOMEM;
    }
    sbuf_t b = {0};
    int st = lp_etcd_post(ep, path, token, body, timeout_ms, wake_fd, collect, &b, err, errlen);
    free(body);
    if (st <= 0) { /* a failure, or woken (err says so) */
        if (st == 0)
            st = LP_EIO;
        free(b.p);
        return st;
    }
    json_error_t je;
    json_t *j = b.p ? json_loads(b.p, 0, &je) : NULL;
    if (st != 200) {
        json_t *m = j ? json_object_get(j, "error") : NULL;
        if (!m)
            m = j ? json_object_get(j, "message") : NULL;
        snprintf(err, errlen, "%s:%s%s: HTTP %d: %s", ep->host, ep->port, path, st,
                 json_is_string(m) ? json_string_value(m) : (b.p ? b.p : ""));
        json_decref(j);
        free(b.p);
        return LP_EIO;
    }
    free(b.p);
    if (!j) {
        snprintf(err, errlen, "%s:%s%s: not JSON", ep->host, ep->port, path);
        return LP_EIO;
    }
    *out = j;
    return 0;
}

char *lp_etcd_b64(const char *p, size_t n)
{
    char *out = malloc(4 * ((n + 2) / 3) + 1);
    if (out)
        EVP_EncodeBlock((unsigned char *)out, (const unsigned char *)p, (int)n);
    return out;
}

char *lp_etcd_unb64(const char *s, size_t *n)
{
    size_t len = strlen(s);
    char *out = malloc(len + 1);
    if (!out)
        return NULL;
    long r = lp_ffi_b64_decode(s, len, 0, out, len + 1);
    if (r < 0) {
        free(out);
        return NULL;
    }
    out[r] = 0;
    *n = (size_t)r;
    return out;
}
