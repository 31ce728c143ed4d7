/* The types of one worker's proxying state: worker, downstream connection, request,
 * upstream connection. Types only (HAProxy's -t.h convention), so every module can
 * include them without an include cycle. Everything here belongs to one worker thread, except
 * lp_gen_t (built by the main thread, then shared read-only by the workers, reference-counted
 * with atomics) and the worker's mailbox fields (guarded by mbox_lock). */
#ifndef LP_PROXY_T_H
#define LP_PROXY_T_H

#include <uv.h>
#include "balancer.h"
#include "buf.h"
#include "compress.h"
#include "common.h"
#include "config.h"
#include "http1.h"
#include "logfield.h"
#include "endpoint.h"
#include "router.h"
#include "metrics.h"
#include "trace-t.h"
#include "turn.h"

typedef struct lp_worker_s lp_worker_t;
typedef struct lp_conn_s lp_conn_t;
typedef struct lp_req_s lp_req_t;
typedef struct lp_peer_s lp_peer_t;
typedef struct lp_accesslog_s lp_accesslog_t;

/* Backpressure: stop reading the sending side when the receiving side has this many
 * bytes queued, resume below the low mark. */
#define LP_HIGH_WATERMARK (128 * 1024)
#define LP_LOW_WATERMARK  (32 * 1024)

/* Room for an IP address as text (INET6_ADDRSTRLEN), NUL included. */
#define LP_IP_TEXT 46

/* A worker's connection pool to one address. It outlives config generations, so a reload
 * keeps the connections of targets that did not change. */
typedef struct lp_pool_s {
    lp_addr_t addr; /* own copy (text owned) */
    /* TLS to this address: the newest generation's client context (a reference), the SNI
     * name (owned; also checked against the certificate), and the last session to resume
     * (an SSL_SESSION, worker-local like the pool). NULL tls: plain HTTP. */
    struct lp_tls_client_s *tls; /* reference (see above) */
    char *sni;                   /* owned */
    void *session;               /* owned: SSL_SESSION reference, NULL: none yet */
    lp_list_t idle;              /* lp_peer_t.link, most recently used first */
    unsigned nidle;
    int h2;            /* HTTP/2 connections (h2_up.c), never in `idle` */
    lp_list_t h2conns; /* lp_h2u_t.link: its HTTP/2 connections (owned: each closes itself) */
    unsigned active;
    uint64_t gen;           /* the newest generation that uses it */
    struct lp_pool_s *next; /* the worker's list */
} lp_pool_t;

/* One target of an upstream in one worker's generation. The set holds one reference and
 * every try in flight another, so a target removed (from Lua, or by a DNS answer) while a
 * try to it runs stays valid until that try ends. Worker-local. */
typedef struct lp_target_rt_s {
    lp_addr_t addr;  /* own copy (text owned): "ip:port", the pool and health key */
    unsigned weight; /* 1-10000 */
    int idx;         /* position in the set and in the balancer's array; -1 once removed */
    unsigned refs;   /* the set's + tries in flight; freed at 0 */
    uint32_t serial; /* unique in its upstream: retries recognise tried targets by it */
    int origin;      /* the config target (a DNS name) it was resolved from; -1: none */
    lp_pool_t *pool; /* the worker's connections (NULL until the generation is attached) */
    struct lp_health_s *health; /* shared by all workers (health.h) */
    uint64_t *m; /* borrowed: this worker's cells of the target's metrics block (metrics.h:
                    tries started, ended); NULL when off or not a config target */
} lp_target_rt_t;

typedef struct lp_upstream_rt_s {
    const lp_upstream_conf_t *conf; /* borrowed from the generation's config */
    lp_worker_t *w; /* borrowed; set when attached to the worker's loop (prepare_switch) */
    uint64_t gen;   /* the generation's id (pools keep the newest that uses them) */
    lp_target_rt_t **targets; /* owned array of ntargets (capacity cap) */
    size_t ntargets, cap;
    lp_bal_target_t *bt; /* owned: the balancer's view, in the same order (capacity cap) */
    lp_balancer_t bal;
    uint32_t version;      /* bumped by every change of the set or of a weight */
    uint32_t next_serial;  /* lp_target_rt_t.serial */
    unsigned in_flight;    /* tries in progress (max_connections) */
    uint64_t budget_start; /* retry budget window (ms) */
    unsigned budget_requests, budget_retries;
    uint64_t last_warned; /* ms: rate limit of the "no available target" warning */
    lp_list_t pending;    /* requests waiting for a slot (lp_req_t.try.qlink), FIFO */
    unsigned npending;
    struct lp_upstream_aux_s *aux; /* owned: timers and DNS queries (targets.c, upstream.c) */
    uint64_t *m; /* borrowed: this worker's cells of the upstream's metrics block (metrics.h);
                    NULL when metrics are off and for set_target() upstreams */
} lp_upstream_rt_t;

/* Why the last try of a request failed (req:last_failure()). */
typedef enum {
    LP_FAIL_NONE = 0,
    LP_FAIL_CONNECT,  /* the connect failed (refused, unreachable) */
    LP_FAIL_TIMEOUT,  /* connect, send or read timed out */
    LP_FAIL_RESET,    /* closed, reset or a failed write before the response */
    LP_FAIL_STATUS,   /* a retry_on status */
    LP_FAIL_PROTOCOL, /* an invalid response, or an internal error (never retried) */
} lp_fail_kind_t;

/* Retries remember this many tried targets across changes of the set. */
#define LP_TRIED_SERIALS 16

/* Retries skip tried targets in upstreams of up to this many targets. */
#define LP_MAX_TRIED 256

typedef struct lp_listener_s {
    uv_tcp_t tcp;                /* tcp.data = this */
    lp_worker_t *w;              /* borrowed: its worker */
    uint64_t id;                 /* the listen slot (lp_bound_t.id) it serves */
    struct lp_tls_server_s *tls; /* the current config's (borrowed); NULL: plain HTTP */
    int proxy_protocol;          /* the current config's listen[].proxy_protocol */
    int http2;                   /* the current config's listen[].http2 (h2c on plain TCP) */
    int closing;                 /* uv_close called; freed in its close callback */
    int pending;                 /* prepared for a generation not committed yet: no accept */
    int deferred;                /* a connection arrived while pending: accept it at commit */
    struct lp_listener_s *next;  /* the worker's list (owned by the worker) */
} lp_listener_t;

/* One listen entry of a generation as bound: the address with port 0 resolved, and the
 * slot id that workers match their listeners by. A reload that keeps the entry keeps the
 * id, the sockets and so the port. */
#define LP_BOUND_FDS 256
typedef struct lp_bound_s {
    uint64_t id;
    char text[64]; /* "127.0.0.1:43121", "[::1]:8080" */
    /* Borrowed: every socket the workers accept on for this entry (one per worker, more
     * after an upgrade from more workers), owned by their listeners; valid while a
     * generation holding this entry is current. What an upgrade hands over (upgrade.c). */
    int fds[LP_BOUND_FDS];
    unsigned nfds;
} lp_bound_t;

/* A config generation as the main thread knows it. Once committed, the workers share it:
 * `refs` (atomic) counts the workers still using it; the last one frees it. */
typedef struct lp_gen_s {
    uint64_t id;
    lp_config_t *config; /* owned */
    lp_bound_t *bound;   /* one per config->listen entry, in the same allocation */
    int refs;
    double loaded_at; /* seconds since the epoch */
} lp_gen_t;

/* One worker's side of a generation: its Lua VM and balancer state. Each request holds a
 * reference (req->g), the worker one more while the generation is current; the last
 * release frees it (and closes its VM). Worker-local. */
typedef struct lp_wgen_s {
    uint64_t id;
    lp_gen_t *gen;               /* reference (lp_gen_t.refs) */
    const lp_config_t *config;   /* borrowed: gen->config */
    struct lp_lua_s *lua;        /* owned, NULL without Lua */
    lp_upstream_rt_t *upstreams; /* owned, config->nupstreams */
    struct lp_rtable_s *rtable;  /* reference: the route table new requests use (config's,
                                    then each admin change's: worker.c lp_workers_set_routes) */
    unsigned refs;
    /* Metrics (metrics.h): this worker's cells of each route's block (config->nroutes + 1,
     * the last for requests no route matched) and each upstream's (config->nupstreams).
     * The arrays are owned, the cells borrowed from the registry (which outlives every
     * generation). NULL when metrics are off. */
    uint64_t **m_route;
    uint64_t **m_up;
} lp_wgen_t;

/* A worker's Lua scheduling (engine/lua_task.c): tasks woken and ready to resume, and
 * the background tasks (timers, spawned threads) of all its VMs, with their bounds.
 * Worker-local. */
typedef struct lp_lua_sched_s {
    lp_list_t ready;     /* lp_lua_task_t.ready_link: woken, resumed in order by `idle` */
    lp_list_t slot_wait; /* lp_lua_task_t.ready_link: due timers waiting for a running slot */
    uv_idle_t idle;      /* active while a task is ready (keeps the loop from sleeping) */
    lp_list_t bg;        /* lp_lua_task_t.link: every started background task */
    unsigned pending;    /* timers waiting for their time or a slot (lua.max_timers) */
    unsigned running;    /* background tasks running (lua.max_running_timers) */
    uint64_t refused;    /* timers and spawns refused by those bounds (GET /status) */
    int on;              /* lp_lua_sched_init ran and lp_lua_sched_close did not */
} lp_lua_sched_t;

struct lp_worker_s {
    int id;
    uv_thread_t thread;
    uv_loop_t loop;
    uv_async_t wakeup; /* main thread → worker: stop, or switch generation */
    uv_timer_t drain_timer;
    lp_ep_env_t ep_env;        /* its endpoints' loop, deadlines and pools (endpoint.h) */
    uv_prepare_t flush;        /* before-sleep hook: access log flush, HTTP/2 output (h2_out) */
    uv_timer_t log_timer;      /* hands idle access log lines over after the flush interval */
    lp_wgen_t *cur;            /* the generation new requests use */
    const lp_config_t *config; /* cur->config: connection-level settings */
    lp_listener_t *listeners;  /* owned list */
    lp_pool_t *pools;          /* owned list: upstream connection pools by address */
    /* Mailbox from the main thread (guarded by `mbox_lock`): a step of a generation switch
     * (prepare, commit, abort) or an access log to reopen; answered on `mbox_done`. */
    uv_mutex_t mbox_lock;
    struct lp_switch_s *mbox; /* borrowed from the main thread until mbox_done is posted */
    int stop_requested;
    uv_sem_t mbox_done;
    int started;        /* the thread runs (main thread only) */
    lp_list_t conns;    /* every downstream connection (lp_conn_t.link) */
    lp_list_t detached; /* requests whose log phase waits on without a connection (dlink) */
    lp_list_t peers;    /* every upstream connection, pooled or busy (lp_peer_t.all) */
    size_t nconns;
    lp_bufpool_t bufs;
    lp_wbpool_t wbatches;
    lp_zippool_t zips;              /* kept gzip compressors (compress.h) */
    lp_accesslog_t *access;         /* owned */
    int stopping;                   /* graceful shutdown in progress */
    uint64_t drain_deadline;        /* uv_now() after which busy connections are cut */
    uint64_t requests;              /* served (read by the admin API: relaxed atomics) */
    struct lp_dyn_upstream_s **dyn; /* req:set_target() upstreams (owned), ndyn of them */
    size_t ndyn;
    /* TLS handshakes waiting for a later loop turn (conn.c), so that a burst of new
     * connections does not hold back requests on established ones. */
    lp_conn_t **hs_q; /* owned array: waiting from hs_first to hs_n (NULL: left) */
    uint32_t hs_first, hs_n, hs_cap;
    uv_idle_t hs_idle;   /* runs them while any wait */
    uint64_t hs_turn_ns; /* handshake time spent in this loop turn */
    lp_turns_t turns;    /* work continued on the next loop turn (turn.h) */
    /* HTTP/2 sessions (lp_h2_t.out_link, h2.c) whose output the pipeline asked for in this
     * loop turn: written once, by the `flush` prepare, so that the responses that end in one
     * turn share one TLS write and one system call (lp_h2_flush_turn). */
    lp_list_t h2_out;
    /* owned: free lists for its HTTP/2 sessions' allocations (h2_mem.h); NULL until the
     * first session */
    struct lp_h2_pool_s *h2_pool;
    lp_req_t *free_reqs; /* owned list: recycled request objects */
    size_t nfree_reqs;
    size_t nfree_reqs_low; /* the fewest free since the last trim (request.c) */
    uv_timer_t house;      /* once a second: gives back what a peak left unused */
    /* CLOCK_REALTIME less CLOCK_MONOTONIC, in seconds, read at init and once a second (house):
     * the worker's own monotonic stamps put on the wall clock without a clock read
     * (lp_worker_wall). A step of the wall clock shows within a second. */
    double wall_offset;
    lp_lua_sched_t lua;               /* Lua tasks ready to resume, background tasks */
    struct lp_cosock_pools_s *cosock; /* owned: proxy.tcp keep-alive pools (cosock.c) */
    /* Its own metrics (metrics.h: it writes with LP_M_ADD/SET, the admin API reads). */
    uint64_t m_cells[LP_WM_N];
    struct lp_trace_exp_s *trace_exp; /* owned: span export (trace_export.c), NULL: none */
    /* owned: response cache wake-ups handed over by other threads (cache_ffi.c); NULL until
     * this worker's first coalescing wait */
    struct lp_cache_inbox_s *cache_inbox;
    lp_trace_counts_t trace_counts; /* its export counters (relaxed atomics, trace-t.h) */
};

/* The worker of a worker's endpoint (a client or upstream connection): its env is the
 * worker's. Never for another endpoint (a health probe's). */
static inline lp_worker_t *lp_ep_worker(const lp_endpoint_t *ep)
{
    return LP_CONTAINER_OF(ep->env, lp_worker_t, ep_env);
}

/* Request flags (LP_RF_*). */
#define LP_RF_WAIT_UPSTREAM  0x0002   /* head parsed; waiting for an upstream connection */
#define LP_RF_READ_PAUSED    0x0004   /* request body reading paused by backpressure */
#define LP_RF_RESP_STARTED   0x0008   /* response head queued to the client */
#define LP_RF_RESP_DONE      0x0010   /* response fully queued to the client */
#define LP_RF_RESP_CHUNKED   0x0020   /* we chunk-encode the response body to the client */
#define LP_RF_RESP_CLOSE     0x0040   /* the client connection closes after this response */
#define LP_RF_UPGRADE_REQ    0x0080   /* the client asked for a protocol upgrade */
#define LP_RF_SENT_100       0x0100   /* 100 Continue sent */
#define LP_RF_HEAD           0x0200   /* HEAD request */
#define LP_RF_LOCAL          0x0400   /* answered locally (no upstream) */
#define LP_RF_PATH_SET       0x0800   /* Lua replaced the path: no strip_prefix */
#define LP_RF_LUA_WAIT       0x1000   /* a Lua phase is suspended */
#define LP_RF_LOG_DONE       0x2000   /* the log phase ran */
#define LP_RF_BODY_BUFFERING 0x4000   /* req:body() is gathering the body */
#define LP_RF_BODY_TOOBIG    0x8000   /* ... and it was larger than asked */
#define LP_RF_ENDED          0x10000  /* lp_req_end ran: holders must let go (request.h) */
#define LP_RF_BODY_WAKE      0x20000  /* gathering stopped: wake the Lua phase after parsing */
#define LP_RF_PARSED         0x40000  /* the head parsed and checked: Lua may see the request */
#define LP_RF_COUNTED        0x100000 /* counted in w->requests */
#define LP_RF_NO_LUA_RESP    0x80000  /* response phase ran or skipped: a new answer goes as is */
#define LP_RF_DETACHED       0x200000 /* its log phase waits on without the connection (request.h) */
#define LP_RF_TLS            0x400000  /* came over TLS (kept for a detached request's scheme) */
#define LP_RF_METERED        0x800000  /* counted in the metrics (conn.c) */
#define LP_RF_H2             0x1000000 /* came on an HTTP/2 stream (h2.c; req:http_version() 2) */
#define LP_RF_GRPC           0x2000000 /* application/grpc: gRPC answers (errpage.h), deadlines */
#define LP_RF_RESP_LENGTH    0x4000000 /* the HTTP/2 response head said content-length */

/* What a response_body filter that waits holds up (lp_req_t.filter_cont). */
enum {
    LP_FC_NONE,
    LP_FC_UPSTREAM, /* the upstream's next bytes (its read is paused meanwhile) */
    LP_FC_EOF,      /* the end of the response (the filters' last call) */
    LP_FC_LOCAL,    /* the end of a local answer's body */
    LP_FC_CACHE,    /* a cache hit's next bytes (conn.c's pump waits meanwhile) */
};

typedef enum {
    LP_RS_HEAD, /* reading the request head */
    LP_RS_BODY, /* streaming the request body */
    LP_RS_DONE, /* request read completely */
} lp_req_state_t;

/* A request's tries at its upstream: the current try (target, connection, timing), what
 * the retries remember (tried targets, the last failure) and its place in the upstream's
 * queue. Owned by the upstream side (upstream_try.c picks, retries and queues; upstream.c
 * runs each try's HTTP exchange and records its failure); conn.c and Lua only read it, except
 * that conn.c drops `peer` when it gives up on the exchange. Reset in one place:
 * lp_upstream_try_reset(). Embedded in lp_req_t. */
typedef struct lp_try_state_s {
    lp_peer_t *peer;     /* borrowed: the upstream connection of the current try, NULL: none */
    lp_target_rt_t *tgt; /* reference while `open`: the current try's target */
    int target;          /* -1 before the first pick; then the picked target's index */
    int tries;           /* picks so far (the first try is 1) */
    uint8_t open;        /* the current try counts as active in the balancer (until try_end) */
    uint8_t no_healthy;  /* the last pick found every target unavailable: 503, not 502 */
    uint8_t queued;      /* in upstream->pending (qlink), waiting for a max_connections slot */
    uint8_t fail_kind;   /* lp_fail_kind_t of the last failed try (target_addr's) */
    int fail_status;     /* its upstream status (LP_FAIL_STATUS) */
    uint64_t t_try;      /* uv_hrtime() ns when the current try started (balancer latency) */
    uint64_t deadline;   /* uv_now() ms by which the response head must come (0: none) */
    uint64_t queued_at;  /* uv_now() ms when it started waiting in the queue */
    lp_list_t qlink;     /* in upstream->pending while `queued` */
    lp_upstream_rt_t *tried_up; /* compared only, never followed: the upstream `tried` is of */
    uint32_t tried_version;     /* ... and the version of its set */
    unsigned ntried;            /* entries of tried_serial in use */
    uint32_t tried_serial[LP_TRIED_SERIALS]; /* the tried targets, across set changes */
    uint64_t tried[LP_BALANCER_TRIED_WORDS(LP_MAX_TRIED)]; /* targets tried, by index (bitmap) */
    char target_addr[64]; /* the last picked target's address (log, req:last_failure()) */
} lp_try_state_t;

/* The response to a request, as it will be sent to the client: the upstream's head (parsed
 * into `arena` by upstream.c), Lua's changes to it (lua_api.c), or a local answer
 * (req:respond(), an error page). conn.c sends it. Embedded in lp_req_t; released by
 * lp_req_end(). */
typedef struct lp_resp_s {
    lp_buf_t *arena;       /* owned reference: the response head bytes, NULL before any */
    lp_header_t *headers;  /* owned, capacity lp_req_t.cap_headers; values point into arena */
    unsigned nheaders;     /* headers in use */
    size_t arena_used;     /* arena bytes in use (the upstream head, then what Lua added) */
    int status;            /* the head's status (upstream, Lua or local); 0: none yet */
    int sent_status;       /* what the client got (logged; 499: it left first); also holds
                            * the upstream's status briefly for the passive health check */
    lp_str_t upgrade;      /* borrowed from arena: the upstream's Upgrade value on a 101 */
    char *local_body;      /* owned: the body of a local answer (req:respond(), error page) */
    size_t local_body_len; /* its length */
    /* The upstream's trailer fields as "name: value\r\n" lines (HTTP/2 trailers, chunked
     * trailers), passed on after the body to clients that can take them. */
    char *trailers;      /* owned, NULL: none */
    size_t trailers_len; /* its length */
    uint64_t body_out;   /* response body bytes queued to the client */
    /* Compression (compress.h): what req:compress() asked for in the response phase, and
     * the compressor conn.c makes from it when the head goes out (a response without a
     * body gets none). A new response (lp__resp_begin) forgets the ask. */
    struct lp_zip_s *zip; /* owned: the body's compressor, NULL: none (freed by lp_req_end) */
    uint8_t zip_coding;   /* LP_ZIP_*: the coding asked for; LP_ZIP_NONE: send as it is */
    uint8_t zip_level;    /* its level (compress.h ranges) */
    /* The client's window of the upstream's body (the cache plugin storing the whole body
     * of a cold Range or conditional request: lp_ffi_cache_window): bytes [win_skip,
     * win_skip + win_len) go to the client, none for a 304. Forgotten by a new answer. */
    uint8_t win;       /* 1: the window applies */
    uint64_t win_skip; /* body bytes still to drop before the window */
    uint64_t win_len;  /* window bytes still to send */
} lp_resp_t;

/* A request's part in the response cache (engine/cache_ffi.c, cache_store.h): what the
 * cache plugin looked up, the fill its response feeds, and a hit's body being written.
 * Zeroed by lp_req_new, released by lp_req_end (lp_cache_req_end). */
typedef struct lp_req_cache_s {
    struct lp_cache_fill_s *fill;         /* owned: the fill this response feeds, or the key lock it
                                             holds (coalescing); NULL: none */
    struct lp_cache_entry_s *hit;         /* reference: the entry last looked up; NULL: none */
    struct lp_cache_zone_s *hit_zone;     /* borrowed (the generation's config holds a reference):
                                             hit's zone */
    struct lp_cache_entry_s *body;        /* reference: the entry whose body is the response's body
                                             (a hit); NULL: none */
    const struct lp_cache_chunk_s *chunk; /* borrowed from body: the next chunk to queue */
    size_t chunk_off;                     /* bytes of chunk already queued */
    uint64_t left;                        /* body bytes still to queue */
    lp_buf_t *pin; /* owned reference: the block write batches pin body's bytes with (its
                      release drops the entry); NULL while nothing is queued */
    struct lp_cache_entry_s *loaded;  /* reference: an entry read back from disk for this
                                         request's next lookup (cache_disk_hit.c); NULL: none */
    uint8_t load_done;                /* a disk read-back ended since the last lookup: the
                                         next one takes `loaded` or misses (never loads again) */
    struct lp_cache_stream_s *stream; /* owned: the file of a disk-only hit whose body is
                                         streamed (cache_disk_hit.c); NULL: none */
    uint8_t streaming;                /* the answer's body comes from `stream`, not chunks;
                                         LP_CACHE_STREAM_FILL: from a filling entry */
    uint8_t load_waited;              /* the last lookup waited for another request's
                                         read-back: the next one reads back itself */
    /* borrowed (the request's generation holds the VM it lives in): the route's native
       policy when the engine ran the plugin's request phase (cache_native.c), a miss; NULL:
       it did not */
    struct lp_cache_native_s *native;
    uint8_t native_kept; /* `hit` is the engine's lookup for the plugin's first one */
    double native_t0;    /* when the engine looked the miss up (the request time) */
    /* A memory hit's body goes on here on the next loop turn once the pump moved its share
     * of one turn (conn.c); cancelled by lp_cache_req_body_done (so also by lp_req_end). */
    lp_turn_t turn;
    /* A coalesced waiter answered from an entry as it fills (cache_ffi.c's fill stream):
     * `hit` is one (lp_ffi_cache_get_filling) while hit_filling; `body` is one while
     * `streaming` is LP_CACHE_STREAM_FILL, read from chunk/chunk_off on (a cursor:
     * lp_cache_fill_read); `fill_hint` its expected length (0: unknown, sent chunked, `left`
     * then UINT64_MAX until its end). */
    uint8_t hit_filling;
    uint64_t fill_hint;
    struct lp_cache_fill_watch_s *watch; /* owned: hears of the fill's next bytes (its worker's
                                            inbox); NULL: none */
} lp_req_cache_t;
#define LP_CACHE_STREAM_FILL 2 /* lp_req_cache_t.streaming */

/* Header slots beyond limits.max_headers for the fields the proxy and plugins add. */
#define LP_HEADERS_SPARE 16

/* One request on a client connection, from its head to its log line. Its lifetime is its
 * own (request.h: a reference count, LP_RF_ENDED); its parts have owners: `try` is the
 * upstream side's, `resp` the response's, `lua` the VM's. */
struct lp_req_s {
    lp_worker_t *w;       /* borrowed: the worker that owns it */
    lp_conn_t *conn;      /* borrowed: the connection carrying it; NULL once ended or detached */
    unsigned refs;        /* the connection's reference + callers holding it (request.h) */
    lp_wgen_t *g;         /* reference: the generation serving it; NULL once ended */
    lp_req_t *next_free;  /* the worker's free list while recycled */
    lp_list_t dlink;      /* in w->detached while LP_RF_DETACHED, else self-linked */
    lp_h1_t h1;           /* request parser; head stored in `arena` */
    lp_buf_t *arena;      /* request head bytes (owned reference) */
    lp_header_t *headers; /* owned, capacity cap_headers */
    /* Capacity of headers and resp.headers: limits.max_headers for what a client or an
     * upstream sends (the parsers' limit), plus LP_HEADERS_SPARE for the fields the proxy and
     * plugins add (a cache hit's Age and Cache-Status on an entry stored with 99 fields). */
    unsigned cap_headers;
    lp_req_state_t state;
    unsigned flags; /* LP_RF_* */
    uint8_t method;
    uint8_t minor;                 /* client HTTP/1.x minor version */
    const lp_route_conf_t *route;  /* borrowed from the generation's config */
    lp_upstream_rt_t *upstream;    /* borrowed: the generation's, or the set_target() one */
    struct lp_dyn_upstream_s *dyn; /* reference: the set_target() upstream, NULL: none */
    lp_str_t hash_key;   /* borrowed from `arena` (set from Lua) for the hash policy; NULL: none */
    uint64_t body_in;    /* request body bytes read */
    uint64_t body_limit; /* largest request body (0: none): limits.max_body_size, or what
                          * a plugin set for this request (req:set_max_body_size) */
    char client_ip[LP_IP_TEXT]; /* the client's address as text, formatted on first use
                                 * (lp_req_client_ip), or by real_ip when the head arrives
                                 * (conn.c); "": not yet */
    char peer_ip[LP_IP_TEXT];   /* the TCP peer's, formatted on first use (lp_req_peer_ip) */
    uint64_t t_start, t_upstream, t_upstream_head; /* uv_hrtime() ns */
    lp_try_state_t try;                            /* the upstream side's (see above) */
    lp_resp_t resp;                                /* the response (see above) */
    struct lp_lua_task_s *lua; /* owned (recycled by the VM): its Lua task, NULL: none yet */
    int route_index;           /* config route (0-based), -1 when none matched */
    /* The route's captures (:params, *rest, named regex groups): names borrowed from the
     * generation's router, values from `arena` (the path as received). */
    lp_route_cap_t params[LP_ROUTE_MAX_CAPS];
    uint8_t nparams;
    struct lp_rtable_s *rtable; /* reference: the table `route` and `params` come from; NULL
                                   before routing */
    lp_buf_t *body_buf;         /* owned: the body gathered by req:body() */
    size_t body_len;            /* bytes in body_buf */
    uint64_t body_max;          /* req:body()'s limit */
    uint8_t filter_cont;        /* LP_FC_*: what a waiting response_body filter holds up */
    lp_logfields_t log_fields;  /* req:log_field()'s, for the access log line (buffer kept
                                   while the request is recycled) */
    lp_trace_t trace;           /* its trace context and try spans (trace.h) */
    /* req:tee_body() (req_body.c): a copy of the body as it is read, for the log phase
     * (the mirror plugin), while the body itself streams upstream at its own pace. */
    lp_buf_t *tee_buf; /* owned: the copy so far, NULL: none (not asked, or over tee_max) */
    size_t tee_len;    /* bytes in tee_buf */
    uint64_t tee_max;  /* the largest copy kept */
    uint8_t tee;       /* LP_TEE_*: whether a copy is kept, and what became of it */
    /* req:set_body() (req_body.c): the body sent upstream in place of the client's, whose
     * bytes are still read (bounded by body_limit) and discarded. */
    lp_buf_t *new_body;   /* owned: the replacement, NULL: the client's body goes up */
    size_t new_body_len;  /* its length (Content-Length upstream) */
    lp_req_cache_t cache; /* the response cache's (see above) */
    /* borrowed: the HTTP/2 stream carrying it (h2.c), NULL on HTTP/1.1. The stream holds the
     * reference that a connection's current request has (request.h); the request ending or
     * detaching clears both links (lp_h2_req_gone). */
    struct lp_h2_stream_s *h2s;
    /* The request's trailer fields as "name: value\r\n" lines (HTTP/2 trailers), passed on
     * after its body (chunked to HTTP/1.1 upstreams, a HEADERS frame to HTTP/2 ones). */
    char *trailers;      /* owned, NULL: none */
    size_t trailers_len; /* its length */
};

/* lp_req_t.tee */
enum {
    LP_TEE_OFF,  /* no copy asked */
    LP_TEE_ON,   /* copying */
    LP_TEE_OVER, /* the body passed tee_max: the copy was dropped */
    LP_TEE_FAIL, /* out of memory: the copy was dropped */
};

/* Connection flags (LP_CF_*); the socket's own are the endpoint's (LP_EPF_*). */
#define LP_CF_CLOSE_AFTER 0x04  /* close once the queued writes complete */
#define LP_CF_TUNNEL      0x08  /* upgraded: raw relay with req->try.peer */
#define LP_CF_EOF         0x10  /* the client closed its side */
#define LP_CF_LINGER      0x20  /* write side shut; discarding input before closing */
#define LP_CF_BUSY        0x40  /* conn_process is on the stack */
#define LP_CF_AGAIN       0x80  /* conn_process was asked for another pass meanwhile */
#define LP_CF_TLS_BYE     0x200 /* TLS close_notify queued */
#define LP_CF_CLEAN_END   0x400 /* the client asked to close and sent nothing more: no lingering */
#define LP_CF_HS_WAIT     0x800 /* its TLS handshake waits for a later turn (w->hs_q[hs_pos]) */
/* The PROXY protocol header has not arrived yet: input is read in the clear, before TLS
 * (LP_EPF_RAW_IN). */
#define LP_CF_PROXY_WAIT 0x1000
#define LP_CF_V6         0x2000 /* client_addr is IPv6 (16 bytes); else IPv4 (its first 4) */
#define LP_CF_H2         0x0001 /* speaks HTTP/2: `h2` is the session, not `req` (h2.c) */
#define LP_CF_H2C        0x0002 /* h2c listener: the HTTP/2 preface first switches to HTTP/2 */

/* A downstream (client) connection: HTTP/1.1 over an endpoint, one request at a time.
 * Idle keep-alive connections are most of a busy proxy's connections, so this stays small
 * (with the endpoint, under 384 bytes: one malloc size class less than before): the
 * client's address is kept as bytes and formatted when used (lp_conn_ip_text), and a
 * waiting handshake is an index into the worker's array, not a list link. */
struct lp_conn_s {
    lp_endpoint_t ep; /* the socket (endpoint.h); freed with it (ops->closed) */
    lp_list_t link;   /* in w->conns */
    union {
        lp_req_t *req; /* reference: the request being read or served (request.h) */
        /* LP_CF_H2: owned: the HTTP/2 session and its streams (h2.c), freed with the
         * connection (its requests are on the streams, never in `req`) */
        struct lp_h2_s *h2;
    };
    union {
        /* Requests started on it (keepalive_requests). */
        uint32_t nrequests;
        /* While LP_CF_HS_WAIT, before any request: its index in w->hs_q. */
        uint32_t hs_pos;
    };
    uint16_t flags;          /* LP_CF_* (LP_CF_V6: client_addr's family) */
    uint8_t client_addr[16]; /* the connection's client, network order; all 0: unknown: the
                                TCP peer, or the source a PROXY header gave (docs/real-ip.md);
                                the peer itself is asked of the socket when wanted */
    /* The low 16 bits of the listen slot id it came in on (lp_listener_t.id), by which each
     * request finds its listener's real_ip settings in its generation. 16 bits keep the
     * struct in its malloc class; ids are a process-wide counter, so two live slots share
     * a tag only after 65,536 listen entries were created while this connection stayed
     * open. */
    uint16_t listen_tag;
};

/* Upstream connection flags (LP_PF_*); the socket's own are the endpoint's (LP_EPF_*). */
#define LP_PF_CONNECTED     0x01
#define LP_PF_REUSED        0x02 /* taken from the pool for this request */
#define LP_PF_RESP_BYTES    0x10 /* some response byte arrived for the current request */
#define LP_PF_PAUSED        0x20 /* reading paused by client backpressure */
#define LP_PF_KEEPALIVE     0x40 /* reusable after the current response */
#define LP_PF_REQ_SENT      0x80 /* the whole request was written */
#define LP_PF_TUNNEL        0x100
#define LP_PF_LUA           0x200 /* the response phase is suspended: hold the body */
#define LP_PF_HANDSHAKE     0x400 /* TCP connected, TLS handshake in progress */
#define LP_PF_FILTER_FAILED 0x800 /* a response_body filter failed on its body (not its fault) */
/* One stream of an HTTP/2 connection (h2_up.c): the peer is embedded in an lp_h2u_stream_t,
 * its `ep` is never opened (the connection has the socket); lp_peer_* hand it to h2_up.c. */
#define LP_PF_H2 0x1000

/* An upstream connection: HTTP/1.1 to one target over an endpoint, pooled between
 * requests. */
struct lp_peer_s {
    lp_endpoint_t ep;           /* the socket (endpoint.h); freed with it (ops->closed) */
    uv_connect_t connect_req;   /* connect_req.data = this */
    lp_upstream_rt_t *upstream; /* borrowed while serving a request (NULL while pooled) */
    lp_pool_t *pool;            /* borrowed: the worker's pool for its address */
    lp_list_t link;             /* in pool->idle while pooled */
    lp_list_t all;              /* in worker->peers */
    lp_h1_t h1;                 /* response parser (its head goes to req->resp.arena) */
    lp_req_t *req;              /* borrowed: the request being served, NULL while pooled */
    unsigned flags;             /* LP_PF_* */
    uint32_t nrequests;
    uint64_t body_out;    /* request body bytes queued to this peer */
    unsigned head_fields; /* h1.nheaders when the response head was complete: the fields a
                             chunked body adds past it are its trailers */
};

#endif
