/* One HTTP/1.1 POST to etcd's JSON gateway over a blocking TCP socket, the response parsed
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
#include <llhttp.h>
#include <openssl/evp.h>
#include "common.h"
#include "etcd.h"
#include "lua_api.h"

int lp_etcd_ep_parse(const char *url, lp_etcd_ep_t *ep, char *err, size_t errlen)
{
    const char *hp = strncmp(url, "http://", 7) == 0 ? url + 7 : NULL;
    const char *colon = hp ? strrchr(hp, ':') : NULL;
    if (!hp || !colon || colon == hp || (size_t)(colon - hp) >= sizeof(ep->host) ||
        strlen(colon + 1) >= sizeof(ep->port) || !colon[1] || strchr(colon, '/')) {
        snprintf(err, errlen, "%s: expected http://HOST:PORT", url);
        return -1;
    }
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

static int connect_ep(const lp_etcd_ep_t *ep, int timeout_ms, char *err, size_t errlen)
{
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(ep->host, ep->port, &hints, &res);
    if (rc) {
        snprintf(err, errlen, "%s:%s: %s", ep->host, ep->port, gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        fd = socket(a->ai_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd < 0)
            continue;
        int c = connect(fd, a->ai_addr, a->ai_addrlen);
        if (c < 0 && errno == EINPROGRESS && wait_fd(fd, POLLOUT, timeout_ms, -1) == 1) {
            int soerr = 0;
            socklen_t sl = sizeof(soerr);
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl);
            c = soerr ? -1 : 0;
            errno = soerr ? soerr : ETIMEDOUT;
        } else if (c < 0 && errno == EINPROGRESS) {
            errno = ETIMEDOUT;
        }
        if (c == 0)
            break;
        snprintf(err, errlen, "%s:%s: %s", ep->host, ep->port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
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
    int fd = connect_ep(ep, connect_ms, err, errlen);
    if (fd < 0)
        return LP_EIO;
    size_t blen = strlen(body);
    char head[1024];
    int hn = snprintf(head, sizeof(head),
                      "POST %s HTTP/1.1\r\nHost: %s:%s\r\nContent-Type: application/json\r\n"
                      "Content-Length: %zu\r\n%s%s%sConnection: close\r\n\r\n",
                      path, ep->host, ep->port, blen, token ? "Authorization: " : "",
                      token ? token : "", token ? "\r\n" : "");
    int rc = LP_EIO;
    const char *parts[2] = {head, body};
    size_t lens[2] = {(size_t)hn, blen};
    for (int i = 0; i < 2; i++) {
        size_t off = 0;
        while (off < lens[i]) {
            ssize_t w = send(fd, parts[i] + off, lens[i] - off, MSG_NOSIGNAL);
            if (w < 0 && (errno == EAGAIN || errno == EINTR)) {
                if (wait_fd(fd, POLLOUT, connect_ms, -1) != 1) {
                    snprintf(err, errlen, "%s:%s: send timed out", ep->host, ep->port);
                    goto out;
                }
                continue;
            }
            if (w < 0) {
                snprintf(err, errlen, "%s:%s: %s", ep->host, ep->port, strerror(errno));
                goto out;
            }
            off += (size_t)w;
        }
    }
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
        int w = wait_fd(fd, POLLIN, timeout_ms, wake_fd);
        if (w < 0) {
            rc = 0; /* woken: not an HTTP status */
            snprintf(err, errlen, "woken");
            goto out;
        }
        if (w == 0) {
            snprintf(err, errlen, "%s:%s: timed out", ep->host, ep->port);
            goto out;
        }
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n < 0) {
            snprintf(err, errlen, "%s:%s: %s", ep->host, ep->port, strerror(errno));
            goto out;
        }
        llhttp_errno_t e =
            n == 0 ? llhttp_finish(&parser) : llhttp_execute(&parser, buf, (size_t)n);
        if (ps.stopped) {
            rc = (int)parser.status_code;
            goto out;
        }
        if (ps.done || e == HPE_PAUSED) {
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
    close(fd);
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
                 int timeout_ms, json_t **out, char *err, size_t errlen)
{
    *out = NULL;
    char *body = json_dumps(req, JSON_COMPACT);
    if (!body) {
        snprintf(err, errlen, "out of memory");
        return LP_ENOMEM;
    }
    sbuf_t b = {0};
    int st = lp_etcd_post(ep, path, token, body, timeout_ms, -1, collect, &b, err, errlen);
    free(body);
    if (st < 0) {
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
