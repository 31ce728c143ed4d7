/* One socket of the engine, on either side: the TCP handle and its timer, the read block,
 * the write batch being filled and the bytes in flight, TLS, and closing. The downstream
 * connection (conn.c) and the upstream connection (upstream.c) embed one and plug in
 * through an ops table, as libuv's handles and h2o's sockets do.
 *
 * Lifetime: lp_ep_close() closes the libuv handle; the owner's memory may go only in
 * ops->closed, which runs from its close callback. Until then every pointer to the
 * endpoint stays valid, and LP_EPF_CLOSING says it is going.
 *
 * An endpoint needs a loop, a deadline heap and pools, not a worker: it takes them from an
 * lp_ep_env_t. A worker has one for its connections; the main thread has one for the
 * active health checks' probes (health_check.c). The loop's thread only. */
#ifndef LP_ENDPOINT_H
#define LP_ENDPOINT_H

#include <uv.h>
#include "buf.h"

struct lp_tls_s;
struct lp_tls_client_s;

/* Endpoint flags (LP_EPF_*). */
#define LP_EPF_READING  0x01 /* uv_read_start is active */
#define LP_EPF_CLOSING  0x02 /* lp_ep_close ran: ops->closed follows */
#define LP_EPF_BROKEN   0x04 /* a write failed: ops->timeout(LP_EP_TM_BROKEN) on the next turn */
#define LP_EPF_WRITABLE 0x08 /* connected: output goes out (before, it waits in outb) */
#define LP_EPF_TLS_END  0x10 /* TLS input ended (close_notify, EOF or error) */
/* Input goes to rbuf in the clear though tls is set: a PROXY protocol header before the
 * handshake (the owner hands what follows it to the session and clears the flag). */
#define LP_EPF_RAW_IN 0x20

/* Timer modes: the owner numbers its own from LP_EP_TM_OWNER on. */
enum { LP_EP_TM_NONE = 0, LP_EP_TM_BROKEN = 1, LP_EP_TM_OWNER = 2 };

typedef struct lp_endpoint_s lp_endpoint_t;

/* A loop's endpoint deadlines: one libuv timer for all of them, over a binary min-heap of
 * endpoints. An endpoint embeds no timer handle of its own (152 bytes, and a second close
 * per connection); a deadline that moves later (a keep-alive timer reset by each request)
 * does not touch the heap: the entry is checked when it comes up. The loop's thread only. */
typedef struct {
    uv_timer_t timer;     /* timer.data = this; fires at heap[0]'s key */
    lp_endpoint_t **heap; /* owned array of n (capacity cap) */
    uint32_t n, cap;
    uint64_t armed; /* uv_now() ms the timer is set for; 0: not set */
    int closed;     /* lp_ep_timers_close ran: deadlines are no longer kept */
} lp_ep_timers_t;

void lp_ep_timers_init(lp_ep_timers_t *t, uv_loop_t *loop);
/* At exit, once no endpoint is left: closes the timer (the struct must live until its
 * close callback, i.e. until the loop ran) and frees the heap. */
void lp_ep_timers_close(lp_ep_timers_t *t);

/* What the endpoints of one loop share (see the top). */
typedef struct lp_ep_env_s {
    uv_loop_t *loop;       /* borrowed: the loop the endpoints' handles are on */
    lp_ep_timers_t timers; /* their deadlines */
    lp_bufpool_t *bufs;    /* borrowed: read blocks and TLS blocks */
    lp_wbpool_t *wbatches; /* borrowed: write batches */
} lp_ep_env_t;

/* Sets the environment up on loop over the given pools (which outlive it). */
void lp_ep_env_init(lp_ep_env_t *env, uv_loop_t *loop, lp_bufpool_t *bufs, lp_wbpool_t *wbatches);

typedef struct {
    /* nread > 0: new input, plaintext appended to rbuf or (TLS) ciphertext handed to the
     * session; nread < 0: the input ended (UV_EOF) or failed. */
    void (*input)(lp_endpoint_t *ep, ssize_t nread);
    /* A queued write completed (status < 0: it failed). Not called once closing. */
    void (*written)(lp_endpoint_t *ep, int status);
    /* The timer armed with lp_ep_timer() ran out (not called once closing). */
    void (*timeout)(lp_endpoint_t *ep, int mode);
    /* The handle is closed: the owner frees itself. */
    void (*closed)(lp_endpoint_t *ep);
} lp_endpoint_ops_t;

struct lp_endpoint_s {
    uv_tcp_t tcp;                 /* tcp.data = this endpoint */
    lp_ep_env_t *env;             /* borrowed: its loop, deadline heap and pools */
    const lp_endpoint_ops_t *ops; /* borrowed: static in the owner's file */
    struct lp_tls_s *tls;         /* owned: the TLS session, NULL for plain TCP */
    lp_buf_t *rbuf;               /* owned reference: the read block, NULL when idle */
    uint32_t rpos, rlen;          /* rbuf: parsed up to rpos, filled up to rlen */
    lp_wbatch_t *outb;            /* owned: the batch being filled, NULL when none */
    size_t out_pending;           /* bytes handed to uv_write, not yet completed */
    /* Packed (4 + 2 + 1 bytes, no padding): every idle client connection carries one. */
    uint32_t hidx;     /* its position in the worker's heap + 1; 0: not in it */
    uint16_t flags;    /* LP_EPF_* */
    uint8_t tmode;     /* what the timer times: LP_EP_TM_* or the owner's */
    uint64_t deadline; /* uv_now() ms when ops->timeout is due; 0: none */
    uint64_t key;      /* its heap entry's time (<= deadline when set) */
};

/* Opens the TCP handle on env's loop (ready for uv_accept or a connect). */
void lp_ep_init(lp_endpoint_t *ep, lp_ep_env_t *env, const lp_endpoint_ops_t *ops);
/* Releases buffers, TLS and its deadline, and closes the handle; ops->closed follows.
 * Idempotent. */
void lp_ep_close(lp_endpoint_t *ep);
/* Times `mode` for ms (LP_EP_TM_NONE cancels). A pending LP_EP_TM_BROKEN is kept. */
void lp_ep_timer(lp_endpoint_t *ep, int mode, uint64_t ms);
/* The batch to append to, with room for k iovecs and `scratch` framing bytes (a full one
 * is flushed first). NULL when out of memory. */
lp_wbatch_t *lp_ep_outb(lp_endpoint_t *ep, unsigned k, unsigned scratch);
/* Hands what is batched (encrypted first with TLS) and TLS's own output to the socket.
 * -1 when the socket broke (LP_EPF_BROKEN: the owner hears of it through ops->timeout
 * on the next loop turn, never under its caller); 0 otherwise, also when not writable. */
int lp_ep_flush(lp_endpoint_t *ep);
/* Only what TLS itself has to send (handshake messages, alerts, tickets): also before the
 * endpoint is writable, during a handshake. -1 when the socket broke. */
int lp_ep_flush_tls(lp_endpoint_t *ep);
/* Bytes queued towards the peer: in flight and batched. */
static inline size_t lp_ep_queued(const lp_endpoint_t *ep)
{
    return ep->out_pending + (ep->outb ? ep->outb->bytes : 0);
}
/* Room in the read block for more input: reads append to the current block while it has
 * room (so a side stays readable while its bytes are used, and pipelined input waits in
 * place); len 0 when it is full of unparsed input or out of memory. */
uv_buf_t lp_ep_read_space(lp_endpoint_t *ep);
/* Drops the read block when everything in it was used. */
void lp_ep_release_rbuf(lp_endpoint_t *ep);
/* TLS: decrypts buffered ciphertext into the read block. 1 when there is new plaintext,
 * 0 when none (yet), -1 when the TLS input ended (LP_EPF_TLS_END; *err says how: 0 for a
 * close_notify or EOF, else UV_EPROTO). */
int lp_ep_tls_fill(lp_endpoint_t *ep, int *err);
/* Starts or stops reading. */
void lp_ep_reading(lp_endpoint_t *ep, int want);

/* TLS client side, as every upstream connection and health probe runs it. On a connected
 * endpoint: starts the handshake with ctx, sending and verifying `name` (lp_tls_peer_name),
 * resuming *session and storing the new one there (the slot outlives the endpoint), and
 * sends the first flight. LP_OK: under way, finish it with lp_ep_tls_handshake as input
 * comes; LP_ENOMEM: TLS could not start; LP_ERROR: it failed (lp_tls_error(ep->tls)). A
 * socket that broke sending is LP_OK here: ops->timeout(LP_EP_TM_BROKEN) follows. */
int lp_ep_tls_connect(lp_endpoint_t *ep, struct lp_tls_client_s *ctx, const char *name,
                      void **session);
/* Ciphertext came during the handshake: steps it and sends what it answers. LP_OK once
 * established, LP_AGAIN while it goes on (or when the socket broke sending: see above),
 * LP_ERROR when it failed (lp_tls_error(ep->tls)). */
int lp_ep_tls_handshake(lp_endpoint_t *ep);

#endif
