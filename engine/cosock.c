/* proxy.tcp() sockets (see cosock.h). Every FFI call of an operation that must wait parks
 * the task and returns LP_COSOCK_PARKED; Lua yields and, once woken, makes the same call
 * again, which either finishes the operation or parks again. The operation in progress
 * (s->op) and its timer survive between those calls; callbacks never run Lua, they only
 * record what happened on the connection and wake the task. */

#include <stdlib.h>
#include <string.h>
#include <openssl/ssl.h>
#include "cosock.h"
#include "endpoint.h"
#include "log.h"
#include "lua_api.h"
#include "lua_vm.h"
#include "tls.h"

#define COSOCK_PARKED   1
#define COSOCK_MORE     2            /* receiveuntil(size): a chunk, no pattern yet */
#define READ_AHEAD      LP_BUF_SIZE  /* buffered input past which reading pauses */
#define SEND_HIGH       (256 * 1024) /* queued output past which send() waits */
#define SEND_LOW        (64 * 1024)  /* ... until it falls below this */
#define DEFAULT_TIMEOUT 60000        /* ms, as OpenResty's lua_socket_*_timeout */
#define DEFAULT_POOL    30           /* as lua_socket_pool_size */
#define MAX_TLS_CTX     8            /* per worker: (verify, CA) pairs kept */
#define MAX_LINE        (16u << 20)  /* "*l" and receiveuntil() without a size */

/* Endpoint timer modes. */
enum { CT_CONNECT = LP_EP_TM_OWNER, CT_SEND, CT_READ, CT_IDLE };
/* Connection states. */
enum { CS_CONNECTING = 1, CS_OPEN };
/* Socket operations that may wait. */
enum { OP_NONE, OP_CONNECT, OP_HANDSHAKE, OP_SEND, OP_READ };

typedef struct cosock_conn_s cosock_conn_t;
typedef struct cosock_pool_s cosock_pool_t;

/* A getaddrinfo on the threadpool: its request must live until its callback, even when
 * the connection that asked gave up (conn NULL then). */
typedef struct {
    uv_getaddrinfo_t req;
    cosock_conn_t *conn; /* borrowed: the connection waiting; NULL once it went */
} cosock_dns_t;

struct cosock_conn_s {
    lp_endpoint_t ep; /* first: the endpoint callbacks find the connection by it */
    uv_connect_t creq;
    lp_cosock_t *sock;    /* borrowed: the socket using it; NULL when pooled or abandoned */
    cosock_dns_t *dns;    /* borrowed: the lookup in flight (it frees itself) */
    cosock_pool_t *pool;  /* borrowed: the pool it idles in; NULL while in use */
    lp_list_t link;       /* in pool->idle while pooled */
    char *key;            /* owned: pool key, opts.pool or "host:port" */
    char *host;           /* owned: the host connect() was given */
    int port;             /* the port connect() was given */
    lp_tls_client_t *cli; /* reference: the TLS context; NULL for plain TCP */
    char *tls_name;       /* owned: the TLS server name (SNI, verified name); NULL: none */
    int tls_verify;       /* the certificate was verified */
    void *session;        /* owned: SSL_SESSION reference (the slot lp_ep_tls_connect fills) */
    int state;            /* CS_* */
    int handshaking;      /* the TLS handshake is in progress */
    int hs_failed;        /* the TLS handshake failed: why says how */
    int in_err;           /* the input ended: 1 at EOF, else a libuv error; 0: open */
    int out_err;          /* a write failed (libuv error); 0: none */
    int timed_out;        /* the running operation's timer ran out */
    char *in;             /* owned: received plaintext not yet taken by Lua */
    size_t in_pos, in_len, in_cap;
    unsigned reused; /* times taken from the pool */
    char why[200];   /* why the handshake (or TLS input) failed */
};

struct lp_cosock_s {
    lp_lua_owned_t owned; /* in its task's list: the task's end closes the socket */
    lp_lua_task_t *task;  /* borrowed: the task it belongs to; NULL once that ended */
    cosock_conn_t *conn;  /* owned (freed by its close callback): NULL when none */
    /* borrowed: the context (loop, pools) it was made in; used only while `task` is set
     * (init_worker's private context is gone once that task ended) */
    lp_worker_t *io;
    lp_lua_waiter_t waiter;             /* meaningful while parked */
    int parked;                         /* Lua yielded for `op`: the connection wakes it */
    int op;                             /* OP_*: the call in progress, repeated after each wake */
    unsigned pool_size;                 /* opts.pool_size at connect (0: the default) */
    uint64_t t_connect, t_send, t_read; /* ms */
    unsigned reused;                    /* the connection's reuse count */
    char err[240];                      /* the last error, for lp_ffi_tcp_error */
};

/* A worker's idle connections to one key. */
struct cosock_pool_s {
    char *key;       /* owned */
    lp_list_t idle;  /* cosock_conn_t.link, most recently used first */
    unsigned n, max; /* idle now, most kept */
    /* The last TLS session of a connection under this key, which new connections resume:
     * for one server name and verification setting (a session made without verifying
     * must not let a verifying handshake skip it). */
    void *session;      /* owned: SSL_SESSION reference; NULL: none */
    char *session_name; /* owned */
    int session_verify; /* the session was verified */
    struct cosock_pool_s *next;
};

/* lp_worker_t.cosock: the worker's pools and its client TLS contexts. */
struct lp_cosock_pools_s {
    cosock_pool_t *pools; /* owned list */
    struct {
        int verify;
        char *ca;             /* owned: CA file, NULL: the system store */
        lp_tls_client_t *cli; /* reference */
    } tls[MAX_TLS_CTX];
    unsigned ntls;
};

static void conn_update_reading(cosock_conn_t *c);

/* ---- errors ---- */

static int sock_err(lp_cosock_t *s, const char *msg)
{
    snprintf(s->err, sizeof(s->err), "%s", msg);
    return -1;
}

static const char *uv_msg(int e)
{
    switch (e) {
    case 1:
    case UV_EOF:
        return "closed";
    case UV_ECONNREFUSED:
        return "connection refused";
    case UV_ECONNRESET:
        return "connection reset by peer";
    case UV_EPIPE:
        return "broken pipe";
    case UV_ETIMEDOUT:
        return "timeout";
    case UV_ENETUNREACH:
        return "network is unreachable";
    case UV_EHOSTUNREACH:
        return "no route to host";
    default:
        return uv_strerror(e);
    }
}

/* ---- connections ---- */

static void sock_wake(lp_cosock_t *s)
{
    if (s && s->parked) {
        s->parked = 0;
        lp_lua_unpark(s->waiter);
    }
}

static void pool_unlink(cosock_conn_t *c)
{
    lp_list_remove(&c->link);
    lp_list_init(&c->link);
    c->pool->n--;
    c->pool = NULL;
}

static void conn_close(cosock_conn_t *c)
{
    if (c->ep.flags & LP_EPF_CLOSING)
        return;
    if (c->dns) {
        c->dns->conn = NULL;
        uv_cancel((uv_req_t *)&c->dns->req);
        c->dns = NULL;
    }
    if (c->pool)
        pool_unlink(c);
    c->sock = NULL;
    lp_ep_close(&c->ep);
}

static void pool_keep_session(lp_worker_t *w, cosock_conn_t *c);

/* The socket lets go of its connection: closed (the close callback frees it). */
static void sock_drop_conn(lp_cosock_t *s)
{
    cosock_conn_t *c = s->conn;
    s->conn = NULL;
    if (c) {
        pool_keep_session(s->io, c);
        conn_close(c);
    }
}

/* The connection failed while connecting: the socket keeps the message, the connection
 * goes. */
static void conn_fail(cosock_conn_t *c, const char *msg)
{
    lp_cosock_t *s = c->sock;
    if (s) {
        snprintf(s->err, sizeof(s->err), "%s", msg);
        s->conn = NULL;
        sock_wake(s);
    }
    conn_close(c);
}

static int conn_append(cosock_conn_t *c, const char *p, size_t n)
{
    if (c->in_pos && c->in_pos == c->in_len)
        c->in_pos = c->in_len = 0;
    if (c->in_cap - c->in_len < n) {
        if (c->in_pos) {
            memmove(c->in, c->in + c->in_pos, c->in_len - c->in_pos);
            c->in_len -= c->in_pos;
            c->in_pos = 0;
        }
        if (lp_grow((void **)&c->in, &c->in_cap, c->in_len + n, 1, 4096))
            return -1;
    }
    memcpy(c->in + c->in_len, p, n);
    c->in_len += n;
    return 0;
}

/* Moves what the endpoint's read block holds into the connection's input. */
static int conn_take_rbuf(cosock_conn_t *c)
{
    lp_endpoint_t *ep = &c->ep;
    if (!ep->rbuf || ep->rpos >= ep->rlen)
        return 0;
    int rc = conn_append(c, ep->rbuf->data + ep->rpos, ep->rlen - ep->rpos);
    ep->rpos = ep->rlen;
    lp_ep_release_rbuf(ep);
    return rc;
}

/* TLS: decrypts what arrived into the input. */
static void conn_tls_pump(cosock_conn_t *c)
{
    while (c->ep.tls && !(c->ep.flags & LP_EPF_CLOSING) && !c->in_err) {
        int err;
        int rc = lp_ep_tls_fill(&c->ep, &err);
        if (rc == 0)
            break;
        if (rc < 0) {
            if (err)
                snprintf(c->why, sizeof(c->why), "TLS error: %s", lp_tls_error(c->ep.tls));
            c->in_err = err ? err : 1;
            break;
        }
        if (conn_take_rbuf(c)) {
            c->in_err = UV_ENOMEM;
            break;
        }
    }
    if (c->ep.tls && !(c->ep.flags & LP_EPF_CLOSING) && !lp_ep_flush_tls(&c->ep))
        lp_tls_in_trim(c->ep.tls);
}

static void conn_tls_step(cosock_conn_t *c)
{
    int rc = lp_ep_tls_handshake(&c->ep);
    if (rc == LP_AGAIN)
        return; /* also when the socket broke sending: the BROKEN timeout reports it */
    c->handshaking = 0;
    if (rc == LP_ERROR) {
        c->hs_failed = 1;
        snprintf(c->why, sizeof(c->why), "handshake failed: %s", lp_tls_error(c->ep.tls));
        return;
    }
    conn_tls_pump(c); /* application data that came with the last flight */
}

static void conn_on_input(lp_endpoint_t *ep, ssize_t nread)
{
    cosock_conn_t *c = (cosock_conn_t *)ep;
    if (c->pool) {
        /* Idle: a close (or anything but TLS's own messages) ends it. */
        if (nread > 0 && c->ep.tls) {
            conn_tls_pump(c);
            if (!c->in_err && c->in_len == c->in_pos)
                return;
        }
        conn_close(c);
        return;
    }
    if (nread > 0) {
        if (c->ep.tls) {
            if (c->handshaking)
                conn_tls_step(c);
            else
                conn_tls_pump(c);
        } else if (conn_take_rbuf(c)) {
            c->in_err = UV_ENOMEM;
        }
    } else {
        if (c->ep.tls && nread == UV_EOF && !c->handshaking) {
            lp_tls_in_eof(c->ep.tls); /* what is buffered comes first */
            conn_tls_pump(c);
        }
        if (!c->in_err)
            c->in_err = nread == UV_EOF ? 1 : (int)nread;
    }
    if (c->ep.flags & LP_EPF_CLOSING)
        return;
    lp_cosock_t *s = c->sock;
    if (s && s->op == OP_READ && nread > 0)
        lp_ep_timer(&c->ep, CT_READ, s->t_read); /* the read timeout is for silence */
    conn_update_reading(c);
    if (s && (s->op == OP_READ || s->op == OP_HANDSHAKE))
        sock_wake(s);
}

static void conn_on_written(lp_endpoint_t *ep, int status)
{
    cosock_conn_t *c = (cosock_conn_t *)ep;
    if (status < 0 && !c->out_err)
        c->out_err = status;
    if (c->pool && status < 0) {
        conn_close(c);
        return;
    }
    lp_cosock_t *s = c->sock;
    if (s && s->op == OP_SEND && (status < 0 || lp_ep_queued(ep) <= SEND_LOW))
        sock_wake(s);
}

static void conn_on_timeout(lp_endpoint_t *ep, int mode)
{
    cosock_conn_t *c = (cosock_conn_t *)ep;
    lp_cosock_t *s = c->sock;
    if (mode == LP_EP_TM_BROKEN) {
        if (!c->out_err)
            c->out_err = UV_EPIPE;
        if (!s) {
            conn_close(c);
            return;
        }
        sock_wake(s);
        return;
    }
    if (!s || mode == CT_IDLE) {
        conn_close(c);
        return;
    }
    if (mode == CT_CONNECT && c->state == CS_CONNECTING) {
        conn_fail(c, "timeout");
        return;
    }
    c->timed_out = 1;
    sock_wake(s);
}

static void conn_on_closed(lp_endpoint_t *ep)
{
    cosock_conn_t *c = (cosock_conn_t *)ep;
    lp_tls_client_unref(c->cli);
    lp_tls_session_free(c->session);
    free(c->in);
    free(c->key);
    free(c->host);
    free(c->tls_name);
    free(c);
}

static const lp_endpoint_ops_t conn_ops = {
    .input = conn_on_input,
    .written = conn_on_written,
    .timeout = conn_on_timeout,
    .closed = conn_on_closed,
};

static void conn_update_reading(cosock_conn_t *c)
{
    if (c->ep.flags & LP_EPF_CLOSING)
        return;
    int want = c->state == CS_OPEN && !c->in_err &&
               (c->pool || c->handshaking || c->in_len - c->in_pos < READ_AHEAD ||
                (c->sock && c->sock->op == OP_READ));
    lp_ep_reading(&c->ep, want);
}

static void on_connect(uv_connect_t *cr, int status)
{
    cosock_conn_t *c = cr->data;
    if (c->ep.flags & LP_EPF_CLOSING)
        return;
    if (status < 0) {
        conn_fail(c, uv_msg(status));
        return;
    }
    uv_tcp_nodelay(&c->ep.tcp, 1);
    c->state = CS_OPEN;
    c->ep.flags |= LP_EPF_WRITABLE;
    lp_ep_timer(&c->ep, LP_EP_TM_NONE, 0);
    conn_update_reading(c);
    sock_wake(c->sock);
}

static void conn_connect(cosock_conn_t *c, const struct sockaddr *sa)
{
    c->creq.data = c;
    int rc = uv_tcp_connect(&c->creq, &c->ep.tcp, sa, on_connect);
    if (rc)
        conn_fail(c, uv_msg(rc));
}

static void on_dns(uv_getaddrinfo_t *r, int status, struct addrinfo *res)
{
    cosock_dns_t *d = LP_CONTAINER_OF(r, cosock_dns_t, req);
    cosock_conn_t *c = d->conn;
    free(d);
    if (c) {
        c->dns = NULL;
        if (status || !res) {
            char msg[240];
            snprintf(msg, sizeof(msg), "host not found: %s", c->host);
            conn_fail(c, msg);
        } else {
            struct sockaddr_storage ss;
            memset(&ss, 0, sizeof(ss));
            memcpy(&ss, res->ai_addr, res->ai_addrlen);
            uint16_t port = htons((uint16_t)c->port);
            if (ss.ss_family == AF_INET6)
                ((struct sockaddr_in6 *)&ss)->sin6_port = port;
            else
                ((struct sockaddr_in *)&ss)->sin_port = port;
            conn_connect(c, (struct sockaddr *)&ss);
        }
    }
    if (res)
        uv_freeaddrinfo(res);
}

static void conn_resolve(cosock_conn_t *c)
{
    cosock_dns_t *d = calloc(1, sizeof(*d));
    if (!d) {
        conn_fail(c, "out of memory");
        return;
    }
    struct addrinfo hints;
    memset(&hints, 0, sizeof(hints));
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    d->conn = c;
    c->dns = d;
    int rc = uv_getaddrinfo(c->ep.env->loop, &d->req, on_dns, c->host, NULL, &hints);
    if (rc) {
        c->dns = NULL;
        free(d);
        char msg[240];
        snprintf(msg, sizeof(msg), "host not found: %s", c->host);
        conn_fail(c, msg);
    }
}

/* ---- pools ---- */

static struct lp_cosock_pools_s *pools_of(lp_worker_t *w, int create)
{
    if (!w->cosock && create)
        w->cosock = calloc(1, sizeof(*w->cosock));
    return w->cosock;
}

static cosock_pool_t *pool_find(lp_worker_t *w, const char *key, int create)
{
    struct lp_cosock_pools_s *ps = pools_of(w, create);
    if (!ps)
        return NULL;
    for (cosock_pool_t *p = ps->pools; p; p = p->next)
        if (!strcmp(p->key, key))
            return p;
    if (!create)
        return NULL;
    cosock_pool_t *p = calloc(1, sizeof(*p));
    if (!p || !(p->key = strdup(key))) {
        free(p);
        return NULL;
    }
    lp_list_init(&p->idle);
    p->next = ps->pools;
    ps->pools = p;
    return p;
}

/* Keeps c's TLS session for the next connection under its key (not while loading: the
 * private context has no pools; nor while the worker stops: its pools are gone). */
static void pool_keep_session(lp_worker_t *w, cosock_conn_t *c)
{
    if (!c->session || !c->tls_name || c->handshaking || c->hs_failed || lp_lua_loading() ||
        w->stopping)
        return;
    cosock_pool_t *p = pool_find(w, c->key, 1);
    char *name = p ? strdup(c->tls_name) : NULL;
    if (!name || !SSL_SESSION_up_ref(c->session)) {
        free(name);
        return;
    }
    lp_tls_session_free(p->session);
    free(p->session_name);
    p->session = c->session;
    p->session_name = name;
    p->session_verify = c->tls_verify;
}

/* A session to resume for a connection under key to (name, verify): a new reference, or
 * NULL. */
static void *pool_session(lp_worker_t *w, const char *key, const char *name, int verify)
{
    if (lp_lua_loading())
        return NULL;
    cosock_pool_t *p = pool_find(w, key, 0);
    if (!p || !p->session || strcmp(p->session_name, name) || p->session_verify != verify ||
        !SSL_SESSION_up_ref(p->session))
        return NULL;
    return p->session;
}

static cosock_conn_t *pool_take(lp_worker_t *w, const char *key)
{
    cosock_pool_t *p = pool_find(w, key, 0);
    if (!p || lp_list_empty(&p->idle))
        return NULL;
    cosock_conn_t *c = LP_CONTAINER_OF(p->idle.next, cosock_conn_t, link);
    pool_unlink(c);
    lp_ep_timer(&c->ep, LP_EP_TM_NONE, 0);
    c->reused++;
    c->timed_out = 0;
    return c;
}

static int pool_put(lp_worker_t *w, cosock_conn_t *c, unsigned max, uint64_t idle_ms)
{
    cosock_pool_t *p = pool_find(w, c->key, 1);
    if (!p)
        return -1;
    p->max = max;
    while (p->n && p->n >= max) /* the least recently used goes */
        conn_close(LP_CONTAINER_OF(p->idle.prev, cosock_conn_t, link));
    c->sock = NULL;
    c->pool = p;
    p->n++;
    lp_list_insert_head(&p->idle, &c->link);
    lp_ep_timer(&c->ep, idle_ms ? CT_IDLE : LP_EP_TM_NONE, idle_ms);
    conn_update_reading(c); /* to notice the peer's close */
    return 0;
}

void lp_cosock_worker_close(lp_worker_t *w)
{
    struct lp_cosock_pools_s *ps = w->cosock;
    if (!ps)
        return;
    w->cosock = NULL;
    while (ps->pools) {
        cosock_pool_t *p = ps->pools;
        ps->pools = p->next;
        while (!lp_list_empty(&p->idle))
            conn_close(LP_CONTAINER_OF(p->idle.next, cosock_conn_t, link));
        lp_tls_session_free(p->session);
        free(p->session_name);
        free(p->key);
        free(p);
    }
    for (unsigned i = 0; i < ps->ntls; i++) {
        lp_tls_client_unref(ps->tls[i].cli);
        free(ps->tls[i].ca);
    }
    free(ps);
}

/* A client TLS context for (verify, ca): the worker keeps one per pair; while loading
 * (init_worker) each connection gets its own. A new reference, or NULL with err. */
static lp_tls_client_t *tls_context(lp_worker_t *w, int verify, const char *ca, char *err,
                                    size_t errlen)
{
    struct lp_cosock_pools_s *ps = lp_lua_loading() ? NULL : pools_of(w, 1);
    if (ps)
        for (unsigned i = 0; i < ps->ntls; i++)
            if (ps->tls[i].verify == verify &&
                (ps->tls[i].ca ? ca && !strcmp(ps->tls[i].ca, ca) : !ca))
                return lp_tls_client_ref(ps->tls[i].cli);
    lp_tls_client_conf_t conf;
    memset(&conf, 0, sizeof(conf));
    conf.verify = verify;
    conf.ca = (char *)(uintptr_t)ca; /* read only by lp_tls_client_new */
    lp_tls_client_t *cli = lp_tls_client_new(&conf, err, errlen);
    if (!cli || !ps || ps->ntls == MAX_TLS_CTX)
        return cli;
    char *copy = ca ? strdup(ca) : NULL;
    if (ca && !copy)
        return cli;
    ps->tls[ps->ntls].verify = verify;
    ps->tls[ps->ntls].ca = copy;
    ps->tls[ps->ntls].cli = lp_tls_client_ref(cli);
    ps->ntls++;
    return cli;
}

/* ---- sockets ---- */

static void sock_release(lp_lua_owned_t *o)
{
    lp_cosock_t *s = LP_CONTAINER_OF(o, lp_cosock_t, owned);
    s->task = NULL;
    s->parked = 0;
    s->op = OP_NONE;
    sock_drop_conn(s);
}

void *lp_ffi_tcp_new(void)
{
    lp_worker_t *io = lp_lua_io();
    if (!io || !lp_lua_running())
        return NULL;
    lp_cosock_t *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->io = io;
    s->owned.release = sock_release;
    s->task = lp_lua_own(&s->owned);
    s->t_connect = s->t_send = s->t_read = DEFAULT_TIMEOUT;
    return s;
}

void lp_ffi_tcp_free(void *sp)
{
    lp_cosock_t *s = sp;
    if (!s)
        return;
    lp_lua_disown(&s->owned);
    sock_drop_conn(s);
    free(s);
}

/* The calling task may use s. */
static int sock_check(lp_cosock_t *s)
{
    if (!s->task)
        return sock_err(s, "closed");
    if (s->task != lp_lua_running())
        return sock_err(s, "bad request (the socket belongs to another request or timer)");
    return 0;
}

/* The running operation waits: Lua yields and calls again once woken. */
static int sock_park(lp_cosock_t *s)
{
    if (lp_lua_park(&s->waiter)) {
        s->op = OP_NONE;
        if (s->conn)
            lp_ep_timer(&s->conn->ep, LP_EP_TM_NONE, 0);
        sock_err(s, "cannot wait here");
        return LP_FFI_EPHASE; /* Lua raises: API misuse, not a network condition */
    }
    s->parked = 1;
    return COSOCK_PARKED;
}

static void sock_op_end(lp_cosock_t *s)
{
    s->op = OP_NONE;
    if (s->conn) {
        s->conn->timed_out = 0;
        lp_ep_timer(&s->conn->ep, LP_EP_TM_NONE, 0);
        conn_update_reading(s->conn);
    }
}

const char *lp_ffi_tcp_error(void *sp)
{
    return ((lp_cosock_t *)sp)->err;
}

void lp_ffi_tcp_timeouts(void *sp, double connect_ms, double send_ms, double read_ms)
{
    lp_cosock_t *s = sp;
    if (connect_ms >= 0)
        s->t_connect = connect_ms > 0 ? (uint64_t)connect_ms : DEFAULT_TIMEOUT;
    if (send_ms >= 0)
        s->t_send = send_ms > 0 ? (uint64_t)send_ms : DEFAULT_TIMEOUT;
    if (read_ms >= 0)
        s->t_read = read_ms > 0 ? (uint64_t)read_ms : DEFAULT_TIMEOUT;
}

static int connect_result(lp_cosock_t *s)
{
    cosock_conn_t *c = s->conn;
    if (!c) {
        s->op = OP_NONE;
        return -1; /* conn_fail left the message */
    }
    if (c->state == CS_OPEN) {
        sock_op_end(s);
        return 0;
    }
    return sock_park(s);
}

int lp_ffi_tcp_connect(void *sp, const char *host, size_t hlen, int port, const char *pool,
                       size_t plen, int pool_size)
{
    lp_cosock_t *s = sp;
    if (sock_check(s))
        return -1;
    if (s->op == OP_CONNECT)
        return connect_result(s);
    if (s->op != OP_NONE)
        return sock_err(s, "socket busy");
    sock_drop_conn(s); /* connect() on a connected socket starts over, as OpenResty does */
    s->reused = 0;
    s->pool_size = pool_size > 0 ? (unsigned)pool_size : 0;
    if (hlen >= 5 && !memcmp(host, "unix:", 5))
        return sock_err(s, "unix domain sockets are not supported");
    if (!hlen || hlen > 255 || memchr(host, 0, hlen) || port < 1 || port > 65535)
        return sock_err(s, "bad address");
    char key[600];
    if (pool && plen)
        snprintf(key, sizeof(key), "%.*s", (int)(plen < 512 ? plen : 512), pool);
    else
        snprintf(key, sizeof(key), "%.*s:%d", (int)hlen, host, port);
    cosock_conn_t *c = lp_lua_loading() ? NULL : pool_take(s->io, key);
    if (c) {
        c->sock = s;
        s->conn = c;
        s->reused = c->reused;
        conn_update_reading(c);
        return 0;
    }
    c = calloc(1, sizeof(*c));
    if (!c)
        return sock_err(s, "out of memory");
    lp_list_init(&c->link);
    c->port = port;
    c->state = CS_CONNECTING;
    lp_ep_init(&c->ep, &s->io->ep_env, &conn_ops);
    c->sock = s;
    s->conn = c;
    if (!(c->key = strdup(key)) || !(c->host = strndup(host, hlen))) {
        sock_drop_conn(s);
        return sock_err(s, "out of memory");
    }
    s->op = OP_CONNECT;
    lp_ep_timer(&c->ep, CT_CONNECT, s->t_connect);
    /* An address literal ("[v6]" too) connects at once; a name is resolved first, on
     * libuv's threadpool. */
    char lit[64];
    const char *h = c->host;
    if (hlen > 2 && h[0] == '[' && h[hlen - 1] == ']' && hlen - 2 < sizeof(lit)) {
        memcpy(lit, h + 1, hlen - 2);
        lit[hlen - 2] = 0;
        h = lit;
    }
    struct sockaddr_storage ss;
    memset(&ss, 0, sizeof(ss));
    if (uv_ip4_addr(h, port, (struct sockaddr_in *)&ss) == 0 ||
        uv_ip6_addr(h, port, (struct sockaddr_in6 *)&ss) == 0)
        conn_connect(c, (struct sockaddr *)&ss);
    else
        conn_resolve(c);
    return connect_result(s);
}

static int hs_result(lp_cosock_t *s)
{
    cosock_conn_t *c = s->conn;
    if (!c) {
        s->op = OP_NONE;
        return sock_err(s, "closed");
    }
    if (c->hs_failed || c->out_err || (c->handshaking && (c->in_err || c->timed_out))) {
        int timed_out = c->timed_out;
        if (c->hs_failed)
            sock_err(s, c->why);
        else if (timed_out)
            sock_err(s, "timeout");
        else
            snprintf(s->err, sizeof(s->err), "handshake failed: %s",
                     uv_msg(c->out_err ? c->out_err : c->in_err));
        s->op = OP_NONE;
        sock_drop_conn(s);
        return -1;
    }
    if (!c->handshaking) {
        sock_op_end(s);
        return 0;
    }
    return sock_park(s);
}

int lp_ffi_tcp_sslhandshake(void *sp, void *session, const char *name, size_t nlen, int verify,
                            const char *ca)
{
    lp_cosock_t *s = sp;
    if (sock_check(s))
        return -1;
    if (s->op == OP_HANDSHAKE)
        return hs_result(s);
    if (s->op != OP_NONE)
        return sock_err(s, "socket busy");
    cosock_conn_t *c = s->conn;
    if (!c || c->state != CS_OPEN)
        return sock_err(s, "closed");
    char sni[256];
    if (nlen) {
        if (nlen >= sizeof(sni) || memchr(name, 0, nlen))
            return sock_err(s, "bad server name");
        memcpy(sni, name, nlen);
        sni[nlen] = 0;
    } else {
        snprintf(sni, sizeof(sni), "%s", c->host);
    }
    if (c->ep.tls) {
        /* A pooled connection did its handshake already. */
        if (!c->tls_name || strcmp(c->tls_name, sni) || c->tls_verify != (verify != 0))
            return sock_err(s, "the pooled connection has TLS for another server name or "
                               "verification (use opts.pool to keep them apart)");
        return 0;
    }
    char why[200];
    lp_tls_client_t *cli = tls_context(s->io, verify != 0, ca && *ca ? ca : NULL, why, sizeof(why));
    if (!cli) {
        snprintf(s->err, sizeof(s->err), "TLS: %s", why);
        return -1;
    }
    c->cli = cli;
    c->tls_verify = verify != 0;
    if (!(c->tls_name = strdup(sni)))
        return sock_err(s, "out of memory");
    if (session && SSL_SESSION_up_ref(session))
        c->session = session; /* the caller's, from an earlier sslhandshake */
    else if (!session)
        c->session = pool_session(s->io, c->key, c->tls_name, c->tls_verify);
    /* The TLS client start and handshake of upstream connections and health probes. */
    int rc = lp_ep_tls_connect(&c->ep, cli, c->tls_name, &c->session);
    if (rc == LP_ENOMEM)
        return sock_err(s, "cannot start TLS");
    c->handshaking = rc == LP_OK;
    if (rc != LP_OK) {
        c->hs_failed = 1;
        snprintf(c->why, sizeof(c->why), "handshake failed: %s", lp_tls_error(c->ep.tls));
    }
    s->op = OP_HANDSHAKE;
    lp_ep_timer(&c->ep, CT_CONNECT, s->t_connect);
    conn_update_reading(c);
    return hs_result(s);
}

void *lp_ffi_tcp_session(void *sp)
{
    lp_cosock_t *s = sp;
    cosock_conn_t *c = s->conn;
    if (!c || !c->session || !SSL_SESSION_up_ref(c->session))
        return NULL;
    return c->session;
}

void lp_ffi_tcp_session_free(void *session)
{
    lp_tls_session_free(session);
}

static int send_result(lp_cosock_t *s)
{
    cosock_conn_t *c = s->conn;
    if (c && !c->out_err && !c->timed_out && lp_ep_queued(&c->ep) > SEND_LOW)
        return sock_park(s);
    if (!c) {
        s->op = OP_NONE;
        return sock_err(s, "closed");
    }
    if (c->out_err || c->timed_out) {
        sock_err(s, c->out_err ? uv_msg(c->out_err) : "timeout");
        s->op = OP_NONE;
        sock_drop_conn(s); /* as OpenResty: a failed send closes */
        return -1;
    }
    sock_op_end(s);
    return 0;
}

int lp_ffi_tcp_send(void *sp, const char *data, size_t n)
{
    lp_cosock_t *s = sp;
    if (sock_check(s))
        return -1;
    if (s->op == OP_SEND)
        return send_result(s);
    if (s->op != OP_NONE)
        return sock_err(s, "socket busy");
    cosock_conn_t *c = s->conn;
    if (!c || c->state != CS_OPEN || c->handshaking)
        return sock_err(s, "closed");
    if (c->out_err || (c->ep.flags & LP_EPF_BROKEN)) {
        sock_err(s, uv_msg(c->out_err ? c->out_err : UV_EPIPE));
        sock_drop_conn(s);
        return -1;
    }
    if (n) {
        lp_buf_t *b = lp_buf_get(c->ep.env->bufs, n);
        lp_wbatch_t *wb = b ? lp_ep_outb(&c->ep, 1, 0) : NULL;
        if (!wb) {
            if (b)
                lp_buf_unref(b);
            return sock_err(s, "out of memory");
        }
        memcpy(b->data, data, n);
        lp_wbatch_add(wb, b->data, n, b);
        lp_buf_unref(b); /* the batch holds it */
        if (lp_ep_flush(&c->ep)) {
            sock_err(s, "broken pipe");
            sock_drop_conn(s);
            return -1;
        }
    }
    if (lp_ep_queued(&c->ep) <= SEND_HIGH)
        return 0;
    s->op = OP_SEND;
    c->timed_out = 0;
    lp_ep_timer(&c->ep, CT_SEND, s->t_send);
    return sock_park(s);
}

/* lp_ffi_tcp_receive: mode */
enum { RM_BYTES = 0, RM_LINE = 1, RM_ALL = 2, RM_UNTIL = 3, RM_ANY = 4 };

int lp_ffi_tcp_receive(void *sp, int mode, double size, const char *pat, size_t plen, int inclusive,
                       lp_str_t *out)
{
    lp_cosock_t *s = sp;
    out->base = "";
    out->len = 0;
    if (sock_check(s))
        return -1;
    if (s->op != OP_NONE && s->op != OP_READ)
        return sock_err(s, "socket busy");
    cosock_conn_t *c = s->conn;
    if (!c || c->state != CS_OPEN || c->handshaking) {
        s->op = OP_NONE;
        return sock_err(s, "closed");
    }
    const char *p = c->in ? c->in + c->in_pos : "";
    size_t avail = c->in_len - c->in_pos;
    size_t n = size > 0 ? (size_t)size : 0;
    size_t take = 0, len = 0;
    int rc = -2; /* not satisfied yet */
    switch (mode) {
    case RM_BYTES:
        if (avail >= n) {
            take = len = n;
            rc = 0;
        }
        break;
    case RM_LINE: {
        const char *nl = avail ? memchr(p, '\n', avail) : NULL;
        if (nl) {
            len = (size_t)(nl - p);
            take = len + 1;
            if (len && p[len - 1] == '\r')
                len--;
            rc = 0;
        }
        break;
    }
    case RM_ALL:
        if (c->in_err == 1) {
            take = len = avail;
            rc = 0;
        }
        break;
    case RM_UNTIL: {
        const char *at = avail >= plen ? memmem(p, avail, pat, plen) : NULL;
        if (at && (!n || (size_t)(at - p) <= n)) {
            take = (size_t)(at - p) + plen;
            len = inclusive ? take : (size_t)(at - p);
            rc = 0;
        } else if (n) {
            size_t safe = at ? (size_t)(at - p) : avail >= plen ? avail - (plen - 1) : 0;
            if (safe >= n) {
                take = len = n;
                rc = COSOCK_MORE;
            }
        }
        break;
    }
    case RM_ANY: /* receiveany(max): whatever arrived, at most max bytes (proxy.http) */
        if (avail) {
            take = len = n && avail > n ? n : avail;
            rc = 0;
        }
        break;
    default:
        return sock_err(s, "bad receive pattern");
    }
    if (rc >= 0) {
        out->base = p;
        out->len = len;
        c->in_pos += take;
        if (s->op == OP_READ)
            sock_op_end(s);
        else
            conn_update_reading(c);
        return rc;
    }
    /* A failed write ends the wait too: its deadline replaced the read timer's. */
    int broken = c->out_err || (c->ep.flags & LP_EPF_BROKEN);
    if (c->in_err || c->timed_out || broken) {
        /* What came is the partial result. A timeout keeps the connection (a later
         * receive may still succeed); an end of input closes it. */
        out->base = p;
        out->len = avail;
        c->in_pos += avail;
        if (c->in_err || broken) {
            if (!c->in_err)
                sock_err(s, uv_msg(c->out_err ? c->out_err : UV_EPIPE));
            else
                sock_err(s, c->in_err == 1 || c->in_err == UV_EOF || !c->why[0] ? uv_msg(c->in_err)
                                                                                : c->why);
            s->op = OP_NONE;
            sock_drop_conn(s);
        } else {
            sock_err(s, "timeout");
            sock_op_end(s);
        }
        return -1;
    }
    if ((mode == RM_LINE || (mode == RM_UNTIL && !n)) && avail >= MAX_LINE) {
        /* A peer that never ends its line must not grow the buffer without bound. */
        out->base = p;
        out->len = avail;
        c->in_pos += avail;
        sock_err(s, mode == RM_LINE ? "line too long" : "pattern not found in 16 MiB");
        s->op = OP_NONE;
        sock_drop_conn(s);
        return -1;
    }
    if (s->op == OP_NONE) {
        s->op = OP_READ;
        c->timed_out = 0;
        lp_ep_timer(&c->ep, CT_READ, s->t_read);
    }
    conn_update_reading(c);
    return sock_park(s);
}

int lp_ffi_tcp_close(void *sp)
{
    lp_cosock_t *s = sp;
    if (sock_check(s))
        return -1;
    if (!s->conn)
        return sock_err(s, "closed");
    s->op = OP_NONE;
    sock_drop_conn(s);
    return 0;
}

int lp_ffi_tcp_setkeepalive(void *sp, double idle_ms, int pool_size)
{
    lp_cosock_t *s = sp;
    if (sock_check(s))
        return -1;
    cosock_conn_t *c = s->conn;
    if (!c)
        return sock_err(s, "closed");
    if (s->op != OP_NONE)
        return sock_err(s, "socket busy");
    if (c->in_len > c->in_pos)
        return sock_err(s, "unread data in buffer");
    if (c->state != CS_OPEN || c->handshaking || c->in_err || c->out_err ||
        (c->ep.flags & LP_EPF_BROKEN)) {
        sock_drop_conn(s);
        return sock_err(s, "closed");
    }
    unsigned max = pool_size > 0 ? (unsigned)pool_size : s->pool_size ? s->pool_size : DEFAULT_POOL;
    uint64_t idle = idle_ms < 0 ? DEFAULT_TIMEOUT : (uint64_t)idle_ms;
    /* Nothing is kept while loading (a private loop that ends with init_worker), while the
     * worker stops, or with output still queued. */
    if (lp_lua_loading() || s->io->stopping || lp_ep_queued(&c->ep)) {
        sock_drop_conn(s);
        return 0;
    }
    s->conn = NULL;
    pool_keep_session(s->io, c);
    if (pool_put(s->io, c, max, idle)) {
        conn_close(c);
        return sock_err(s, "out of memory");
    }
    return 0;
}

int lp_ffi_tcp_reused(void *sp)
{
    lp_cosock_t *s = sp;
    if (sock_check(s))
        return -1;
    if (!s->conn)
        return sock_err(s, "closed");
    return (int)s->reused;
}
