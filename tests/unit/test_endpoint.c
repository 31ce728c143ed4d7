/* The endpoint (engine/endpoint.c) and the relay (engine/relay.c) over a real loopback TCP
 * pair, on a loop of the test's own: bytes in order through batches and flushes, written
 * callbacks, deadlines (moved later, cancelled, removed on close, many at once), close
 * exactly once after the handle closed, backpressure marks, and the tunnel move. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>
#include "lp_test.h"
#include "proxy-t.h"
#include "relay.h"

typedef struct {
    lp_endpoint_t ep; /* first: the tests cast back */
    size_t got;       /* bytes the input callback saw */
    unsigned char last;
    int order_ok;
    int eof;
    int written, write_errors;
    int timeouts, last_mode;
    int closed;
    lp_endpoint_t *relay_to; /* when set, input is moved there (a tunnel) */
} side_t;

static void on_input(lp_endpoint_t *ep, ssize_t nread)
{
    side_t *s = (side_t *)ep;
    if (nread < 0) {
        s->eof = 1;
        return;
    }
    if (s->relay_to) {
        lp_relay_move(ep, s->relay_to);
        return;
    }
    for (uint32_t i = ep->rpos; i < ep->rlen; i++) {
        unsigned char c = (unsigned char)ep->rbuf->data[i];
        if (c != (unsigned char)(s->last + 1))
            s->order_ok = 0;
        s->last = c;
        s->got++;
    }
    ep->rpos = ep->rlen;
    lp_ep_release_rbuf(ep);
}

static void on_written(lp_endpoint_t *ep, int status)
{
    side_t *s = (side_t *)ep;
    if (status < 0)
        s->write_errors++;
    else
        s->written++;
}

static void on_timeout(lp_endpoint_t *ep, int mode)
{
    side_t *s = (side_t *)ep;
    s->timeouts++;
    s->last_mode = mode;
}

static void on_closed(lp_endpoint_t *ep)
{
    ((side_t *)ep)->closed++;
}

static const lp_endpoint_ops_t ops = {on_input, on_written, on_timeout, on_closed};

typedef struct {
    uv_loop_t loop;
    lp_bufpool_t bufs;
    lp_wbpool_t wbatches;
    lp_ep_env_t env; /* what endpoints use: no worker */
    side_t a, b;     /* a connected TCP pair */
} rig_t;

/* A loop with only what endpoints use: pools and a deadline heap. */
static int rig_open(rig_t *r)
{
    memset(r, 0, sizeof(*r));
    if (uv_loop_init(&r->loop))
        return -1;
    lp_bufpool_init(&r->bufs, 16);
    lp_ep_env_init(&r->env, &r->loop, &r->bufs, &r->wbatches);
    int ls = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t len = sizeof(sa);
    if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 1) ||
        getsockname(ls, (struct sockaddr *)&sa, &len))
        return -1;
    int c = socket(AF_INET, SOCK_STREAM, 0);
    int small = 32 * 1024; /* small socket buffers: writes queue in libuv, as under load */
    if (c < 0 || setsockopt(c, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small)) ||
        connect(c, (struct sockaddr *)&sa, sizeof(sa)))
        return -1;
    int s = accept(ls, NULL, NULL);
    close(ls);
    if (s < 0 || setsockopt(s, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small)))
        return -1;
    side_t *sides[2] = {&r->a, &r->b};
    int fds[2] = {c, s};
    for (int i = 0; i < 2; i++) {
        lp_ep_init(&sides[i]->ep, &r->env, &ops);
        if (uv_tcp_open(&sides[i]->ep.tcp, fds[i]))
            return -1;
        sides[i]->ep.flags |= LP_EPF_WRITABLE;
        sides[i]->order_ok = 1;
        sides[i]->last = 0xff; /* the first byte expected is 0 */
    }
    return 0;
}

static void rig_close(rig_t *r)
{
    lp_ep_close(&r->a.ep);
    lp_ep_close(&r->b.ep);
    lp_ep_timers_close(&r->env.timers);
    uv_run(&r->loop, UV_RUN_DEFAULT);
    CHECK_EQ_INT(uv_loop_close(&r->loop), 0);
    lp_wbpool_destroy(&r->wbatches);
    CHECK_EQ_INT(r->bufs.outstanding, 0); /* every block came back */
    lp_bufpool_destroy(&r->bufs);
}

/* Runs the loop until cond holds or 2 s pass. */
#define RUN_UNTIL(r, cond)                                                                         \
    do {                                                                                           \
        uint64_t until_ = uv_now(&(r)->loop) + 2000;                                               \
        while (!(cond) && uv_now(&(r)->loop) < until_)                                             \
            uv_run(&(r)->loop, UV_RUN_ONCE);                                                       \
    } while (0)

/* n bytes counting 0, 1, 2... (mod 256) from *next, pinned in fresh blocks. */
static void send_counting(lp_endpoint_t *ep, size_t n, unsigned char *next)
{
    while (n) {
        size_t k = n < 3000 ? n : 3000;
        lp_buf_t *b = lp_buf_get(ep->env->bufs, k);
        for (size_t i = 0; i < k; i++)
            b->data[i] = (char)(*next)++;
        lp_wbatch_t *wb = lp_ep_outb(ep, 1, 0);
        lp_wbatch_add(wb, b->data, k, b);
        lp_buf_unref(b); /* the batch holds it */
        n -= k;
    }
    CHECK_EQ_INT(lp_ep_flush(ep), 0);
}

static void test_bytes_in_order(void)
{
    rig_t r;
    REQUIRE(rig_open(&r) == 0);
    lp_ep_reading(&r.b.ep, 1);
    unsigned char next = 0;
    /* More than a socket buffer and a batch hold: writes queue and complete later. */
    send_counting(&r.a.ep, 3 << 20, &next);
    CHECK(lp_ep_queued(&r.a.ep) > 0);
    CHECK(lp_relay_full(&r.a.ep));
    RUN_UNTIL(&r, r.b.got == (3u << 20));
    CHECK_EQ_INT(r.b.got, 3 << 20);
    CHECK(r.b.order_ok);
    CHECK(r.a.written > 0);
    CHECK_EQ_INT(r.a.write_errors, 0);
    CHECK_EQ_INT(r.a.ep.out_pending, 0);
    CHECK(lp_relay_drained(&r.a.ep));
    rig_close(&r);
    CHECK_EQ_INT(r.a.closed, 1);
    CHECK_EQ_INT(r.b.closed, 1);
}

static void test_eof(void)
{
    rig_t r;
    REQUIRE(rig_open(&r) == 0);
    lp_ep_reading(&r.b.ep, 1);
    lp_ep_close(&r.a.ep);
    RUN_UNTIL(&r, r.b.eof && r.a.closed);
    CHECK(r.b.eof);
    CHECK_EQ_INT(r.a.closed, 1);
    lp_ep_close(&r.a.ep); /* idempotent */
    rig_close(&r);
    CHECK_EQ_INT(r.a.closed, 1);
    CHECK_EQ_INT(r.b.closed, 1);
}

static void test_deadlines(void)
{
    rig_t r;
    REQUIRE(rig_open(&r) == 0);
    uint64_t t0 = uv_now(&r.loop);
    lp_ep_timer(&r.a.ep, LP_EP_TM_OWNER, 30);
    lp_ep_timer(&r.a.ep, LP_EP_TM_OWNER + 1, 120); /* moved later: not the first one */
    lp_ep_timer(&r.b.ep, LP_EP_TM_OWNER, 20);
    lp_ep_timer(&r.b.ep, LP_EP_TM_NONE, 0); /* cancelled */
    RUN_UNTIL(&r, r.a.timeouts);
    CHECK_EQ_INT(r.a.timeouts, 1);
    CHECK_EQ_INT(r.a.last_mode, LP_EP_TM_OWNER + 1);
    CHECK(uv_now(&r.loop) - t0 >= 110);
    CHECK_EQ_INT(r.b.timeouts, 0);
    /* Earlier than the entry: the heap moves it up. */
    lp_ep_timer(&r.b.ep, LP_EP_TM_OWNER, 200);
    lp_ep_timer(&r.b.ep, LP_EP_TM_OWNER + 2, 10);
    RUN_UNTIL(&r, r.b.timeouts);
    CHECK_EQ_INT(r.b.timeouts, 1);
    CHECK_EQ_INT(r.b.last_mode, LP_EP_TM_OWNER + 2);
    /* A deadline of a closed endpoint never fires. */
    lp_ep_timer(&r.a.ep, LP_EP_TM_OWNER, 5);
    lp_ep_close(&r.a.ep);
    CHECK_EQ_INT(r.env.timers.n, 0);
    uv_sleep(20);
    RUN_UNTIL(&r, r.a.closed);
    CHECK_EQ_INT(r.a.timeouts, 1);
    rig_close(&r);
}

/* Many endpoints' deadlines at once come in deadline order. */
static int fired_order_ok, fired_count;
static uint64_t fired_last;
static void order_timeout(lp_endpoint_t *ep, int mode)
{
    uint64_t d = (uint64_t)mode;
    if (d < fired_last)
        fired_order_ok = 0;
    fired_last = d;
    fired_count++;
}
static void noop_closed(lp_endpoint_t *ep) {}
static void noop_input(lp_endpoint_t *ep, ssize_t n) {}
static void noop_written(lp_endpoint_t *ep, int s) {}

static void test_many_deadlines(void)
{
    static const lp_endpoint_ops_t order_ops = {noop_input, noop_written, order_timeout,
                                                noop_closed};
    rig_t r;
    REQUIRE(rig_open(&r) == 0);
    enum { N = 300 };
    lp_endpoint_t *eps = calloc(N, sizeof(*eps));
    REQUIRE(eps != NULL);
    fired_order_ok = 1;
    fired_count = 0;
    fired_last = 0;
    for (int i = 0; i < N; i++) {
        lp_ep_init(&eps[i], &r.env, &order_ops);
        /* The mode carries the delay, so the callback can check the order. */
        int ms = (i * 37) % 97 + LP_EP_TM_OWNER;
        lp_ep_timer(&eps[i], ms, (uint64_t)ms);
    }
    RUN_UNTIL(&r, fired_count == N);
    CHECK_EQ_INT(fired_count, N);
    CHECK(fired_order_ok);
    CHECK_EQ_INT(r.env.timers.n, 0);
    for (int i = 0; i < N; i++)
        lp_ep_close(&eps[i]);
    rig_close(&r);
    free(eps);
}

/* A tunnel: what b reads goes to a third endpoint as it is, pinned, not copied. */
static void test_relay_move(void)
{
    rig_t r, r2;
    REQUIRE(rig_open(&r) == 0);
    REQUIRE(rig_open(&r2) == 0);
    /* r2 runs on its own loop: r.b relays into r2.a, r2.b receives. */
    lp_ep_reading(&r.b.ep, 1);
    lp_ep_reading(&r2.b.ep, 1);
    r.b.relay_to = &r2.a.ep;
    unsigned char next = 0;
    send_counting(&r.a.ep, 200000, &next);
    for (int i = 0; i < 400 && r2.b.got < 200000; i++) {
        uv_run(&r.loop, UV_RUN_NOWAIT);
        uv_run(&r2.loop, UV_RUN_NOWAIT);
        uv_sleep(1);
    }
    CHECK_EQ_INT(r2.b.got, 200000);
    CHECK(r2.b.order_ok);
    rig_close(&r);
    rig_close(&r2);
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_bytes_in_order), LP_TEST_ENTRY(test_eof),
    LP_TEST_ENTRY(test_deadlines),      LP_TEST_ENTRY(test_many_deadlines),
    LP_TEST_ENTRY(test_relay_move),
};

LP_TEST_MAIN(tests)
