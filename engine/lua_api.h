/* Every function Lua reaches through the FFI. lua/luaproxy/ffi.lua declares the same
 * prototypes (a unit test compares the two). */
#ifndef LP_LUA_API_H
#define LP_LUA_API_H

#include <stddef.h>
#include "common.h"
#include "shdict.h"

/* lp_ffi_req_get: what */
enum {
    LP_FFI_METHOD = 1,
    LP_FFI_PATH,
    LP_FFI_URI,
    LP_FFI_QUERY,
    LP_FFI_HOST,
    LP_FFI_SCHEME,
    LP_FFI_CLIENT_IP,
    LP_FFI_UPSTREAM_NAME,
    LP_FFI_UPSTREAM_ADDR,
    LP_FFI_VERSION,
    LP_FFI_PEER_IP, /* #14: the TCP peer (req:peer_ip()) */
};

/* lp_ffi_tls_get: what (the numbers of tls.h's LP_TLS_F_*, which lua_api.c checks) */
enum {
    LP_FFI_TLS_PROTOCOL = 1,
    LP_FFI_TLS_CIPHER,
    LP_FFI_TLS_SNI,
    LP_FFI_TLS_ALPN,
    LP_FFI_TLS_RESUMED,         /* "1" or "0" */
    LP_FFI_TLS_CLIENT_VERIFIED, /* "1" or "0" */
    LP_FFI_TLS_CLIENT_SUBJECT,  /* RFC 2253, only when verified */
};

/* lp_ffi_header_set: mode */
enum { LP_FFI_HSET = 0, LP_FFI_HADD = 1, LP_FFI_HCLEAR = 2 };

/* lp_ffi_upstream_target: op */
enum { LP_FFI_TADD = 0, LP_FFI_TREMOVE = 1, LP_FFI_TWEIGHT = 2 };

/* Return codes (0 is success). */
enum {
    /* A range of their own (-201...), apart from lp_rc_t and LP_E* (common.h). */
    LP_FFI_EINVAL = -201,
    LP_FFI_ENOSPACE = -202,
    LP_FFI_EFRAMING = -203,
    LP_FFI_EPHASE = -204,    /* not while Lua of a worker runs (a phase or init_worker) */
    LP_FFI_ENOTFOUND = -205, /* no such target */
    LP_FFI_EOTHER = -206,    /* the handle is not the running phase's request */
};

int lp_ffi_req_get(void *r, int what, lp_str_t *out);
int lp_ffi_header_get(void *r, int resp, const char *name, size_t nlen, int nth, lp_str_t *out);
int lp_ffi_header_count(void *r, int resp);
int lp_ffi_header_at(void *r, int resp, int i, lp_str_t *name, lp_str_t *value);
int lp_ffi_header_set(void *r, int resp, int mode, const char *name, size_t nlen, const char *value,
                      size_t vlen);
int lp_ffi_set_path(void *r, const char *p, size_t n);
int lp_ffi_set_upstream(void *r, const char *name, size_t n);
int lp_ffi_set_target(void *r, const char *host, size_t n, int port);
int lp_ffi_set_hash_key(void *r, const char *key, size_t n);
/* req:set_max_body_size(): this request's body limit in bytes (0: none), instead of
 * limits.max_body_size; request phase (before any body byte is read or refused). */
void lp_ffi_set_body_limit(void *r, double n);
/* -1 when the client connection is not TLS or the fact is not known. */
int lp_ffi_tls_get(void *r, int what, lp_str_t *out);
/* req:log_field(): sets (kind 1-3: engine/logfield.h LP_LOGF_*) or removes (kind 0) a field
 * of the request's access log line. 0; LP_FFI_EINVAL: a bad name; LP_FFI_ENOSPACE: over
 * log.max_fields, the value's or the request's size limit (or out of memory). */
int lp_ffi_log_field(void *r, const char *name, size_t nlen, int kind, const char *value,
                     size_t vlen);
/* The response head's status; in the log phase, the status the access log writes. */
int lp_ffi_status(void *r);
int lp_ffi_set_status(void *r, int status);
int lp_ffi_respond_begin(void *r);
/* Empties the response head list for a new answer (C callers: no phase check). */
int lp__resp_begin(struct lp_req_s *r);
/* Adds "Name: value\r\n" lines to the response's fields, with lp_ffi_header_set's checks (as
 * LP_FFI_HADD), copied into the head's arena at once (a cache hit's head, cache_ffi.c). 0, or
 * LP_FFI_EINVAL / LP_FFI_EFRAMING / LP_FFI_ENOSPACE (the lines before the bad one stay).
 * trusted: the lines passed lp__wire_valid before (they are only split, not checked again). */
int lp__resp_add_wire(struct lp_req_s *r, const char *p, size_t n, int trusted);
/* One line "Name: value\r\n" of the engine's own (the cache's Cache-Status), whose name is
 * nlen bytes: added as it is, not split or checked. 0, LP_FFI_EINVAL or LP_FFI_ENOSPACE. */
int lp__resp_add_line(struct lp_req_s *r, const char *p, size_t n, size_t nlen);
/* lp__resp_add_wire's checks alone: 0, LP_FFI_EINVAL or LP_FFI_EFRAMING. */
int lp__wire_valid(const char *p, size_t n);
int lp_ffi_respond(void *r, int status, const char *body, size_t len);
int lp_ffi_sleep(double seconds);
/* req:body(): 0 with the body in *out, 1 when the caller must yield and call again,
 * LP_FFI_ENOSPACE when larger than max. */
int lp_ffi_body_read(void *r, double max, lp_str_t *out);
void lp_ffi_log(int level, const char *msg, size_t len);
double lp_ffi_now(void);
double lp_ffi_monotonic(void);
double lp_ffi_start_time(void *r);
int lp_ffi_worker_id(void);
/* req:last_failure(): why the request's last try failed (lp_fail_kind_t; 0: no failed try),
 * with its target's address and, for LP_FAIL_STATUS, the upstream's status. */
int lp_ffi_last_failure(void *r, lp_str_t *addr, int *status);
/* proxy.upstream(name): the upstream's index in the running generation, LP_FFI_EINVAL when
 * there is none of that name, LP_FFI_EPHASE outside a worker's Lua. */
int lp_ffi_upstream_find(const char *name, size_t n);
/* Adds ("ip:port", weight), removes or reweights a target of upstream `ups` in this worker:
 * 0, 1 (add: it was there; its weight is set), LP_FFI_EINVAL (not an "ip:port" or a weight
 * outside 1-10000), LP_FFI_ENOTFOUND, LP_FFI_ENOSPACE, LP_FFI_EPHASE. */
int lp_ffi_upstream_target(int ups, int op, const char *addr, size_t n, int weight);
/* The i-th target of upstream `ups`: its weight, with its address and health state; -1 past
 * the end. */
int lp_ffi_upstream_target_at(int ups, int i, lp_str_t *addr, lp_str_t *state);
/* The runaway guard (lua/luaproxy/guard.lua, engine/lua_vm.c): the flag the watchdog sets
 * for this thread's VM; and, once Lua saw it set, the timeout in seconds when the running
 * phase really passed its deadline, else 0 (the flag is then cleared). */
int *lp_ffi_guard_flag(void);
double lp_ffi_guard_expired(void);
const char *lp_ffi_guard_limit(void);
/* Background tasks (engine/lua_task.c, lua/luaproxy/tasks.lua). */
int lp_ffi_bg_new(double delay, int timer);
/* The request path normalisation (engine/pathnorm.h), for `luaproxy explain`: in place, the
 * new length or LP_PATHN_ABOVE_ROOT / LP_PATHN_BAD_ESCAPE. */
long lp_ffi_path_normalize(char *p, size_t len, unsigned flags);
/* IP sets (engine/ipset.h, ipset_ffi.c): CIDRs with values, longest prefix wins; find returns
 * the value, -1 for no match, LP_IPSET_EINVAL for text that is not an address. */
void *lp_ffi_ipset_new(void);
void lp_ffi_ipset_free(void *s);
int lp_ffi_ipset_add(void *s, const char *text, size_t len, int value);
int lp_ffi_ipset_add_file(void *s, const char *path, int value, char *err, size_t errlen);
int lp_ffi_ipset_build(void *s);
int lp_ffi_ipset_find(const void *s, const char *text, size_t len);
/* Countries from a MaxMind-format database (engine/geoip.c). open: NULL with err; country:
 * 1 and the ISO code in out, 0 when the address has none. */
void *lp_ffi_geoip_open(const char *path, char *err, size_t errlen);
void lp_ffi_geoip_close(void *db);
int lp_ffi_geoip_country(void *db, const char *ip, size_t len, char out[3]);

int lp_ffi_bg_wait(double interval);
int lp_ffi_bg_cancel(int id);
int lp_ffi_bg_count(int running);
int lp_ffi_exiting(void);
/* proxy.tcp() (engine/cosock.c, lua/luaproxy/tcp.lua). A socket is a void * that Lua
 * frees with lp_ffi_tcp_free. Calls that wait return 1 (the task is parked: Lua yields
 * and makes the same call again once resumed); -1 is an error, whose message
 * lp_ffi_tcp_error gives. lp_ffi_tcp_new: NULL outside a task (or out of memory). */
void *lp_ffi_tcp_new(void);
void lp_ffi_tcp_free(void *s);
const char *lp_ffi_tcp_error(void *s);
/* Milliseconds; a negative one is left as it is, 0 is the default (60 s). */
void lp_ffi_tcp_timeouts(void *s, double connect_ms, double send_ms, double read_ms);
int lp_ffi_tcp_connect(void *s, const char *host, size_t hlen, int port, const char *pool,
                       size_t plen, int pool_size);
int lp_ffi_tcp_sslhandshake(void *s, void *session, const char *name, size_t nlen, int verify,
                            const char *ca);
/* The connection's TLS session (a new reference, freed by lp_ffi_tcp_session_free), or NULL. */
void *lp_ffi_tcp_session(void *s);
void lp_ffi_tcp_session_free(void *session);
/* 0 once queued (or 1: parked while much is queued). */
int lp_ffi_tcp_send(void *s, const char *data, size_t n);
/* mode 0: size bytes, 1: a line, 2: all, 3: until pat (size > 0: at most size bytes; 2
 * then says the pattern was not reached yet), 4: any (what arrived, at most size bytes). *out is
 * valid until the next call; on error it holds the partial data. */
int lp_ffi_tcp_receive(void *s, int mode, double size, const char *pat, size_t plen, int inclusive,
                       lp_str_t *out);
int lp_ffi_tcp_close(void *s);
/* idle_ms < 0: the default (60 s), 0: no idle timeout; pool_size <= 0: opts.pool_size or 30. */
int lp_ffi_tcp_setkeepalive(void *s, double idle_ms, int pool_size);
int lp_ffi_tcp_reused(void *s);

/* proxy.shared (engine/shdict.h, lua/luaproxy/shared.lua): the dict named so in the running
 * worker's generation (NULL: none); then the operations, which return shdict.h's
 * LP_SHDICT_E* codes. Values come out in this thread's scratch buffer. */
void *lp_ffi_shdict_find(const char *name, size_t n);
int lp_ffi_shdict_get(void *d, const char *k, size_t klen, int stale, lp_shdict_val_t *out);
int lp_ffi_shdict_store(void *d, int op, const char *k, size_t klen, lp_shdict_val_t *v,
                        double exptime);
int lp_ffi_shdict_incr(void *d, const char *k, size_t klen, double step, int has_init, double init,
                       double init_ttl, lp_shdict_val_t *out);
int lp_ffi_shdict_ttl(void *d, const char *k, size_t klen, lp_shdict_val_t *out);
int lp_ffi_shdict_gcra(void *d, const char *k, size_t klen, double interval, double burst,
                       double cost, lp_shdict_gcra_t *out);
int lp_ffi_shdict_expire(void *d, const char *k, size_t klen, double exptime);
void lp_ffi_shdict_flush_all(void *d);
int lp_ffi_shdict_flush_expired(void *d, int max);
int lp_ffi_shdict_keys(void *d, int max, lp_str_t **out);
int lp_ffi_shdict_push(void *d, const char *k, size_t klen, int left, lp_shdict_val_t *v);
int lp_ffi_shdict_pop(void *d, const char *k, size_t klen, int left, lp_shdict_val_t *out);
int lp_ffi_shdict_llen(void *d, const char *k, size_t klen);
double lp_ffi_shdict_capacity(void *d);
double lp_ffi_shdict_free_space(void *d);

/* proxy.http's response parser (engine/lua_http.c, lua/luaproxy/http.lua): http1.c over
 * llhttp as an object Lua feeds with received bytes. feed and eof return the LP_FFI_HR_*
 * bits reached so far, or LP_FFI_EINVAL with the reason in lp_ffi_hresp_error. What
 * body and fields return stays valid until the next feed, eof, reset or free. */
typedef struct lp_hresp_s lp_hresp_t;
enum {
    LP_FFI_HR_HEAD = 1,   /* the final head is parsed (1xx were skipped) */
    LP_FFI_HR_DONE = 2,   /* the message is complete */
    LP_FFI_HR_WAIT = 4,   /* lp_ffi_hresp_recv: the task is parked; yield, then call again */
    LP_FFI_HR_ESOCK = -1, /* lp_ffi_hresp_recv: the socket failed (lp_ffi_tcp_error says) */
};
lp_hresp_t *lp_ffi_hresp_new(void);
void lp_ffi_hresp_free(lp_hresp_t *r);
/* For the next exchange: head_req (no body whatever the head says), max_body (0: none). */
void lp_ffi_hresp_reset(lp_hresp_t *r, int head_req, double max_body);
int lp_ffi_hresp_feed(lp_hresp_t *r, const char *data, size_t len);
/* The connection closed: ends a body that runs to close, else fails. */
int lp_ffi_hresp_eof(lp_hresp_t *r);
int lp_ffi_hresp_status(lp_hresp_t *r);
/* The body bytes received since the last call, *len of them (dropped at the next feed). */
const char *lp_ffi_hresp_body(lp_hresp_t *r, int *len);
/* Every header field as "name\0value\0" (names lower-cased), *len bytes in all, valid until
 * the next call; NULL when out of memory. One call and one Lua string per response. */
const char *lp_ffi_hresp_fields(lp_hresp_t *r, int *len);
/* 1 when the connection may carry another request: complete, keep-alive, nothing after. */
int lp_ffi_hresp_reusable(lp_hresp_t *r);
/* Receives from a proxy.tcp() socket (up to max bytes) and feeds the parser: feed's
 * result, LP_FFI_HR_WAIT or LP_FFI_HR_ESOCK; the socket closing is lp_ffi_hresp_eof. */
int lp_ffi_hresp_recv(lp_hresp_t *r, void *sock, int max);
/* 1 once lp_ffi_hresp_recv received any response byte. */
int lp_ffi_hresp_got(lp_hresp_t *r);
const char *lp_ffi_hresp_error(lp_hresp_t *r);

/* proxy.router (lua/luaproxy/router.lua; engine/router_ffi.c over engine/router.h): a
 * builder, its routes and conditions (kind LP_RK_*, mode LP_RM_*), the compiled router, and
 * a lookup: in = method, host, path, sni, client address (base NULL: unknown); hvals and
 * qvals one value per lp_ffi_router_name(); from the first route index to consider; out
 * meta = {captures, predicate}, names and values (LP_ROUTE_MAX_CAPS each). Returns the
 * route index or -1. */
void *lp_ffi_router_builder(void);
int lp_ffi_router_route(void *b);
int lp_ffi_router_add(void *b, int kind, int mode, const char *name, size_t nlen, const char *value,
                      size_t vlen, char *err, size_t errlen);
void *lp_ffi_router_finish(void *b, char *err, size_t errlen);
void lp_ffi_router_builder_free(void *b);
void lp_ffi_router_free(void *r);
int lp_ffi_router_nnames(void *r, int kind);
const char *lp_ffi_router_name(void *r, int kind, int i);
int lp_ffi_router_match(void *r, const lp_str_t *in, const lp_str_t *hvals, const lp_str_t *qvals,
                        int from, int *meta, lp_str_t *names, lp_str_t *values);
/* `luaproxy explain` (lua/luaproxy/tools/explain.lua): the routes of r that can never match
 * (lp_router_shadows), as pairs {route, by} of 0-based positions, at most max of them in
 * pairs; returns how many there are. And the one sentence that names such a pair
 * (lp_router_shadow_text; a name may be NULL); returns its length. */
int lp_ffi_router_shadows(void *r, int *pairs, int max);
int lp_ffi_router_shadow_text(char *out, size_t n, int route, const char *name, int by,
                              const char *by_name);
/* req:param(name): a capture of the request's config route. 0, or -1 when it has none. */
int lp_ffi_req_param(void *r, const char *name, size_t n, lp_str_t *out);
/* proxy.metrics (engine/metrics_lua.c, docs/metrics.md). Declares a metric (type 0
 * counter, 1 gauge, 2 histogram; labels: nlabels names joined by NUL, labels_len bytes;
 * bounds: a histogram's) or finds it again by name: its id, or LP_FFI_EINVAL with err
 * (another declaration under that name) or LP_FFI_ENOSPACE. In init_worker only. */
int lp_ffi_metric_new(int type, const char *name, const char *help, const char *labels,
                      size_t labels_len, int nlabels, const double *bounds, int nbounds,
                      int max_series, char *err, size_t errlen);
/* The running worker's cells of metric id: per series cps doubles (a value, or a
 * histogram's buckets then its sum), max_series + 1 series (the last: overflow), then the
 * count of overflowed updates. NULL outside a worker's VM. */
double *lp_ffi_metric_cells(int id);
/* The index of the series with these label values (joined by NUL) in the running worker,
 * made when new; max_series when the metric has no room left (the overflow series). */
int lp_ffi_metric_series(int id, const char *labels, size_t len);
/* req:trace_id() and friends (engine/trace.c): 64 hex digits into out (trace id, span id,
 * parent span id, zeros without one); returns LP_FFI_TRACE_* bits, -1 without a trace. */
enum { LP_FFI_TRACE_SAMPLED = 1, LP_FFI_TRACE_PARENT = 2, LP_FFI_TRACE_RECORDED = 4 };
int lp_ffi_trace_ids(void *r, char *out);
/* ---- waf: Hyperscan match collector (engine/waf_hs.c) ---- */
/* Hits of one hs_scan: the pattern ids that matched, in the order reported. */
typedef struct lp_waf_hits {
    unsigned int n;    /* ids recorded (at most cap) */
    unsigned int cap;  /* room in ids */
    unsigned int more; /* flag: a match came when ids was full (the caller checks it all) */
    unsigned int *ids; /* borrowed: the caller's array of cap ids */
} lp_waf_hits_t;
/* Hyperscan's match callback (match_event_handler), given to hs_scan by
 * luaproxy/waf/hs.lua with ctx an lp_waf_hits_t: records the id and goes on. A C function,
 * so that the scan needs no Lua callback and the Lua calling it stays JIT-compiled. */
int lp_ffi_waf_hs_collect(unsigned int id, unsigned long long from, unsigned long long to,
                          unsigned int flags, void *ctx);
/* ---- waf: the per-value pipeline (engine/waf_scan.c, engine/waf_transform.c) ---- */
/* Hyperscan's match_event_handler and hs_scan, as waf_scan.c calls them (the engine need not
 * link Hyperscan: luaproxy/waf/hs.lua hands hs_scan over). */
typedef int (*lp_waf_hs_match_fn)(unsigned int id, unsigned long long from, unsigned long long to,
                                  unsigned int flags, void *ctx);
typedef int (*lp_waf_hs_scan_fn)(const void *db, const char *data, unsigned int length,
                                 unsigned int flags, void *scratch, lp_waf_hs_match_fn on_event,
                                 void *ctx);
/* One rule set's transformation chains and one request's transformed values (a VM's own). */
typedef struct lp_waf_scan lp_waf_scan_t;
/* A state for chains 1..nchains (none set yet); NULL when out of memory. */
lp_waf_scan_t *lp_ffi_waf_scan_new(lp_waf_hs_scan_fn scan, unsigned nchains);
/* Chain id is chain parent (0: the value itself) then step (a lp_ffi_waf_transform_id);
 * parent < id. 0, or -1 for a bad argument. A chain left unset cannot be scanned here. */
int lp_ffi_waf_scan_chain(lp_waf_scan_t *ws, unsigned id, unsigned parent, int step);
/* Forgets the transformed values: before each request's first scan (they are keyed by the
 * addresses of the request's values). */
void lp_ffi_waf_scan_reset(lp_waf_scan_t *ws);
void lp_ffi_waf_scan_free(lp_waf_scan_t *ws);
/* Registers db (borrowed, compared only) as a database the scans use, under a serial no
 * earlier registration took: results are kept only for a registered database, by that
 * serial (a database at the address of a freed one, registered again, never finds the
 * freed one's). 0, or -1 when it cannot be (its results are then not kept). */
int lp_ffi_waf_scan_db(lp_waf_scan_t *ws, const void *db);
/* Values vals[k] (lens[k] bytes; borrowed until the reset, as the transformed texts are
 * kept by their address) through chain, each scanned with db; returns the hits, in the order
 * Hyperscan reports them, as *hits[2j] = pattern id, *hits[2j+1] = k (0xFFFFFFFF for the id:
 * the scan of value k failed or matched more than 64 patterns, so every condition tests it),
 * and their count j; -1 when out of memory or a chain is unset. */
long lp_ffi_waf_scan_values(lp_waf_scan_t *ws, unsigned chain, const void *db, void *scratch,
                            const char *const *vals, const size_t *lens, unsigned n,
                            const unsigned **hits);
/* As lp_ffi_waf_scan_values, each value through every chain of chains[0..nch) in turn (a
 * multiMatch condition's steps: each a prefix of the next), each text scanned; a step that
 * gave its input back unchanged is not scanned again. Hits of value k may repeat an id. */
long lp_ffi_waf_scan_steps(lp_waf_scan_t *ws, const unsigned *chains, unsigned nch, const void *db,
                           void *scratch, const char *const *vals, const size_t *lens, unsigned n,
                           const unsigned **hits);
/* One collection's values (or the named items of one) as lp_ffi_waf_scan_segs reads them:
 * the caller fills vals, lens and n once a request (setting gen to 0 each time), and gives
 * room for n keys, the state's (each value's id for the request, while gen is the state's). */
typedef struct lp_waf_seg {
    const char *const *vals;  /* borrowed: n values, alive until the reset (as scan_values') */
    const size_t *lens;       /* borrowed: their lengths */
    unsigned long long *keys; /* borrowed: room for n, written by the state */
    unsigned n;
    unsigned gen;
} lp_waf_seg_t;
/* As lp_ffi_waf_scan_steps over the values of segs[0..nseg) in turn; a hit is three words,
 * *hits[3j] = pattern id, *hits[3j+1] = the segment's index in segs, *hits[3j+2] = the value's
 * in the segment; returns their count j, or -1. reads (NULL: every hit): by pattern id below
 * nreads, the segments whose hits of that id the caller wants (bit j: segs[j]); the others
 * are left out (an id from nreads on, a segment from 64 on and 0xFFFFFFFF never are). */
long lp_ffi_waf_scan_segs(lp_waf_scan_t *ws, const unsigned *chains, unsigned nch, const void *db,
                          void *scratch, lp_waf_seg_t *const *segs, unsigned nseg,
                          const unsigned long long *reads, unsigned nreads, const unsigned **hits);
/* Value v through chain (kept for the request as the scans keep theirs): 0, or -1. */
int lp_ffi_waf_scan_value(lp_waf_scan_t *ws, unsigned chain, const char *v, size_t n,
                          const char **out, size_t *olen);
/* A transformation's step code by its name in luaproxy/waf/transforms.lua; -1 when C has none. */
int lp_ffi_waf_transform_id(const char *name);
/* The room lp_ffi_waf_transform needs for n bytes. */
size_t lp_ffi_waf_transform_bound(int step, size_t n);
/* One step: the output's length in out, or -1 when the value stays as it is. */
long lp_ffi_waf_transform(int step, const char *in, size_t n, char *out);
/* ---- waf: operators in C (engine/waf_sqli.c, waf_xss.c, waf_validate.c) ---- */
/* Where @detectSQLi / @detectXSS found an attack. */
typedef struct lp_waf_detect {
    unsigned from; /* its first byte, from 1 (Lua's) */
    unsigned to;   /* its last byte, from 1 */
    char fp[8];    /* @detectSQLi: the token classes from the attack on (up to 6), NUL-ended */
} lp_waf_detect_t;
/* @detectSQLi and @detectXSS: 1 with *out filled when v is an attack, else 0. */
int lp_ffi_waf_sqli(const char *v, size_t n, lp_waf_detect_t *out);
int lp_ffi_waf_xss(const char *v, size_t n, lp_waf_detect_t *out);
/* @validateByteRange: the first byte of v (from 1) whose bit is set in bad (256 bits, bit
 * c & 7 of bad[c >> 3]: the bytes outside the ranges), or 0. */
size_t lp_ffi_waf_byte_range(const unsigned char *bad, const char *v, size_t n);
/* @validateUrlEncoding: the first '%' (from 1) not followed by two hex digits, or 0. */
size_t lp_ffi_waf_urlenc_invalid(const char *v, size_t n);
/* @validateUtf8Encoding: the first byte (from 1) of an invalid UTF-8 sequence, or 0. */
size_t lp_ffi_waf_utf8_invalid(const char *v, size_t n);
/* ---- waf: compiled databases shared by every VM of the process (engine/waf_db.c) ---- */
/* Frees a published database (Hyperscan's hs_free_database: the engine does not link it). */
typedef int (*lp_waf_db_free_fn)(void *db);
/* The database compiled from key (len bytes), with a reference taken for the calling VM, and
 * its publisher's notes in *meta (borrowed while the reference is held); NULL if none. */
void *lp_ffi_waf_db_acquire(const char *key, size_t len, const char **meta, size_t *meta_len);
/* Publishes db (ownership passes here) compiled from key, with notes meta; returns the
 * database to use with a reference taken: db, or the one another VM published meanwhile
 * (db is then freed). NULL when out of memory: the caller keeps db as its own. */
void *lp_ffi_waf_db_publish(const char *key, size_t len, void *db, lp_waf_db_free_fn fre,
                            const char *meta, size_t meta_len, const char **meta_out,
                            size_t *meta_out_len);
/* Gives back a reference; the last one frees the database. */
void lp_ffi_waf_db_release(void *db);
/* A key's state in the registry. */
enum {
    LP_WAF_DB_NONE = 0,    /* unknown (or the compile thread could not take it) */
    LP_WAF_DB_PENDING = 1, /* the compile thread has it */
    LP_WAF_DB_READY = 2,   /* compiled: a reference can be taken */
    LP_WAF_DB_FAILED = 3   /* Hyperscan refused the group: the notes say why */
};
/* Queues the compile of n patterns (copied) on the registry's thread, unless the key is
 * known; returns the key's state (NONE: Hyperscan's functions are not in the executable or
 * out of memory, the caller compiles it itself). */
int lp_ffi_waf_db_compile(const char *key, size_t len, unsigned n, const char *const *exprs,
                          const unsigned *flags, const unsigned *ids);
/* The key's state; READY: *db with a reference taken and its notes in *meta (borrowed while
 * the reference is held; db NULL: the state only, no reference); FAILED: *meta says why. */
int lp_ffi_waf_db_get(const char *key, size_t len, void **db, const char **meta, size_t *meta_len);
/* Databases published and still referenced (tests). */
int lp_ffi_waf_db_count(void);
/* ---- request body copy and replacement (engine/req_body.c, req_body.h) ---- */
/* lp_ffi_body_teed results. */
enum {
    LP_FFI_TEE_NONE = 0,    /* no copy was asked */
    LP_FFI_TEE_DONE = 1,    /* the whole body, in *out */
    LP_FFI_TEE_OVER = 2,    /* the body passed the limit: no copy */
    LP_FFI_TEE_PARTIAL = 3, /* the body did not end (the client went away) */
    LP_FFI_TEE_FAIL = 4,    /* out of memory: no copy */
};
/* req:tee_body(max): keep a copy of the body as it streams, up to max bytes (>= 1); 0, or
 * LP_FFI_EINVAL. A second call keeps the first limit. */
int lp_ffi_body_tee(void *r, double max);
/* The copy (valid until the next call into the engine): LP_FFI_TEE_*. */
int lp_ffi_body_teed(void *r, lp_str_t *out);
/* req:set_body(s): send these n bytes upstream in place of the client's body; 0,
 * LP_FFI_ENOSPACE (out of memory), LP_FFI_EPHASE (the request already went upstream). */
int lp_ffi_body_set(void *r, const char *p, size_t n);
/* req:set_query(q): the query sent upstream ("" removes it), the path kept (and the route's
 * strip_prefix with it); 0, LP_FFI_EINVAL (spaces, controls or '#'), LP_FFI_ENOSPACE. */
int lp_ffi_set_query(void *r, const char *q, size_t n);

/* ---- auth plugins: cryptography (engine/crypto.c) ---- */
/* lp_ffi_pkey_kind: what a public key is (0: a kind no JWS algorithm uses) */
enum {
    LP_FFI_PKEY_RSA = 1,
    LP_FFI_PKEY_P256 = 256,
    LP_FFI_PKEY_P384 = 384,
    LP_FFI_PKEY_ED25519 = 25519,
};
/* base64 (url = 0: standard, padding optional) or base64url (url = 1: no padding) into out;
 * the length, LP_FFI_EINVAL for bad input, LP_FFI_ENOSPACE when out is too small. */
long lp_ffi_b64_decode(const char *in, size_t len, int url, char *out, size_t outlen);
/* md: 1 (SHA-1), 256, 384, 512; the digest's length, LP_FFI_EINVAL for another md. */
int lp_ffi_digest(int md, const char *data, size_t len, char *out);
/* 1 when equal, 0 otherwise, in a time that does not depend on where they differ. */
int lp_ffi_ct_equal(const char *a, size_t alen, const char *b, size_t blen);
/* A password against an htpasswd-style hash ($2y$ $2b$ $2a$ $5$ $6$ $apr1$ $1$ {SHA}):
 * 1 match, 0 no match, LP_FFI_EINVAL for a hash of another kind or malformed. */
int lp_ffi_passwd_verify(const char *pw, size_t pwlen, const char *hash, size_t hlen);
/* basic_auth's slow hashes off the worker's thread (engine/crypto_job.c; not in the
 * lp_native library: specs check in place). job: starts lp_ffi_passwd_verify on the thread
 * pool; 0 and *job, LP_FFI_EPHASE outside a task (check in place), LP_FFI_ENOSPACE over the
 * process's bound of checks in flight. wait: 0 and *result when done, 1 when the task was
 * parked (Lua yields, then calls again), LP_FFI_EPHASE. free: from Lua's finaliser. */
int lp_ffi_passwd_job(const char *pw, size_t pwlen, const char *hash, size_t hlen, void **job);
int lp_ffi_passwd_job_wait(void *job, int *result);
void lp_ffi_passwd_job_free(void *job);
/* A keyed HMAC (md 256, 384, 512), NULL on error; verify: 1 when sig is the MAC of data. */
void *lp_ffi_hmac_new(int md, const char *key, size_t klen);
void lp_ffi_hmac_free(void *h);
int lp_ffi_hmac_verify(void *h, const char *data, size_t dlen, const char *sig, size_t siglen);
/* Public keys (EVP_PKEY *, freed by lp_ffi_pkey_free): from PEM (a public key, a
 * certificate, or a private key), or from JWK members already base64url-decoded. NULL on
 * error (pem: the reason in err). */
void *lp_ffi_pkey_pem(const char *pem, size_t len, char *err, size_t errlen);
void *lp_ffi_pkey_rsa(const char *n, size_t nlen, const char *e, size_t elen);
void *lp_ffi_pkey_ec(int bits, const char *x, size_t xlen, const char *y, size_t ylen);
void *lp_ffi_pkey_ed25519(const char *x, size_t xlen);
void lp_ffi_pkey_free(void *k);
int lp_ffi_pkey_kind(void *k);
/* 1 when sig signs data with k (md 256/384/512, ignored for Ed25519; pss: RSA-PSS), 0 when
 * not, LP_FFI_EINVAL for a bad md. ECDSA signatures are JWS's raw r || s. */
int lp_ffi_pkey_verify(void *k, int md, int pss, const char *data, size_t dlen, const char *sig,
                       size_t siglen);

/* ---- compression (engine/compress.c, the compression plugin) ---- */
/* req:compress(): the response body goes out compressed with coding (1 gzip, 2 br:
 * compress.h LP_ZIP_*) at level, after the response_body filters. Response phase. Returns
 * 1 (it will), 0 when the body is known to be shorter than min_length bytes (it goes as
 * it is), LP_FFI_EINVAL for a bad coding or level. The caller sets Content-Encoding. */
int lp_ffi_resp_compress(void *r, int coding, int level, double min_length);

/* The response cache (engine/cache_ffi.c, cache_store.h; lua/luaproxy/cache.lua). zone: the
 * zone named so (NULL: none). get: 1 with the entry's head in *head (this thread's scratch,
 * valid until the next get) and its body length, the entry kept by the request for respond and
 * refresh; 0 none. lock: 1 the request holds the key's lock (coalescing), 0 another fill holds
 * it (wait on locked, then get again). store (response phase): the upstream body is gathered
 * as it streams and linked when complete, kept `keep` seconds. put: an entry stored now (a Vary
 * marker, a background refresh's answer). respond: the looked-up entry's body (bytes first..last,
 * -1: all) is the answer, with `status` and the fields in `fields` ("Name: value\r\n" lines:
 * the response's fields are replaced by them, one call per answer); flags LP_FFI_CACHE_ONLY_HOOK
 * (request phase): the caller's plugin is the route's only response hook and ignores its own
 * answer, so the response phase is skipped. refresh: the looked-up entry gets
 * a new head. purge: mode 0 key (all its variants), 1 prefix, 2 all; returns how many. count:
 * cache_store.h LP_CACHE_C_*. read: copies up to n bytes of the looked-up entry's body from
 * `first` into dst (a multipart/byteranges answer Lua builds); returns how many. window
 * (response phase, an upstream body of known length): the client gets only bytes first..
 * first+n-1 of it while the whole is stored (0 bytes: a 304); LP_FFI_EINVAL otherwise.
 * upstream_length: the upstream body's Content-Length, 0 for a response without a body,
 * -1 when its length is not known ahead (chunked, or delimited by the close). */
void *lp_ffi_cache_zone(const char *name, size_t n);
/* get on a zone with a disk tier may also answer 2: the entry is on disk only and is being
 * read back with the task parked; wait, then get again (it answers 1 or 0 then). Or 3:
 * another request reads that entry back (it holds the key's lock): wait on the key
 * (lp_ffi_cache_wait), then get again (which reads it back itself if it is still on disk
 * only). 4: no hit, though an entry is there: one wider than this request's header slots
 * (made before it was stored), a miss that is no "nothing under the key". */
int lp_ffi_cache_get(void *r, void *zone, const char *key, size_t klen, const char *sec,
                     size_t slen, lp_str_t *head, double *body_len);
int lp_ffi_cache_lock(void *r, void *zone, const char *key, size_t klen, double timeout);
int lp_ffi_cache_locked(void *zone, const char *key, size_t klen);
/* wait: parks the task until the fill holding key's lock ends, or until it made no progress
 * (its head, body bytes) for `seconds`: a slow body still coming keeps its waiters. 1:
 * parked; 0: nothing holds the lock. */
int lp_ffi_cache_wait(void *zone, const char *key, size_t klen, double seconds, int early);
/* The entry another request's fill gathers for (key, sec), once its head is written: 1 and
 * its head (the request's next answer, Zone:respond, streams its body as it fills: a plain
 * whole answer only), *hint the body's expected length (0: unknown); 0 when there is none.
 * wait with `early` wakes when such a head is ready (answers 2 at once when it is). */
int lp_ffi_cache_get_filling(void *r, void *zone, const char *key, size_t klen, const char *sec,
                             size_t slen, lp_str_t *head, double *hint);
int lp_ffi_cache_store(void *r, void *zone, const char *key, size_t klen, const char *sec,
                       size_t slen, const char *head, size_t hlen, double keep);
int lp_ffi_cache_put(void *zone, const char *key, size_t klen, const char *sec, size_t slen,
                     const char *head, size_t hlen, const char *body, size_t blen, double keep);
/* lp_ffi_cache_respond flags. FIELDS_CHECKED: `fields` passed lp_ffi_cache_wire_check (the
 * cache plugin checks a stored head's served lines once per decoded head, not per hit). */
enum { LP_FFI_CACHE_ONLY_HOOK = 1, LP_FFI_CACHE_FIELDS_CHECKED = 2 };
/* 0 when the "Name: value\r\n" lines would be accepted by lp_ffi_cache_respond, else
 * LP_FFI_EINVAL / LP_FFI_EFRAMING. */
int lp_ffi_cache_wire_check(const char *fields, size_t flen);
int lp_ffi_cache_respond(void *r, int status, const char *fields, size_t flen, const char *more,
                         size_t mlen, double first, double last, int flags);
int lp_ffi_cache_refresh(void *r, const char *head, size_t hlen, double keep);
/* The fields a head served from the cache on this request may carry (its header slots less
 * the answer's own: Age, Cache-Status, Content-Range), or LP_FFI_EOTHER. */
int lp_ffi_cache_hit_room(void *r);
/* lp_cache_room_no_status for the plugin's own Cache-Status (one logger for the event). */
void lp_ffi_cache_room_no_status(int rc);
/* Bytes of the looked-up entry's body into dst: how many; LP_FFI_ENOTFOUND when its body is
 * only in its file (a streamed disk hit). */
double lp_ffi_cache_read(void *r, double first, char *dst, double n);
int lp_ffi_cache_window(void *r, double first, double n);
double lp_ffi_cache_upstream_length(void *r);
double lp_ffi_cache_purge(void *zone, int mode, const char *key, size_t klen);
void lp_ffi_cache_count(void *zone, int what);
/* The cache's hot path without header tables (cacheperf). fields: a bit per name of
 * LP_FFI_CACHE_FIELDS present in the request's (resp 0) or the response's (resp 1) fields,
 * bit i for the i-th name: the plugin reads only those present (lua/luaproxy/cache.lua).
 * store_fields: as store, the head being `meta` followed by the response's fields as
 * "h Name\tvalue\n" lines, in the upstream's order and case, without the ones a cache never
 * stores (hop-by-hop: Connection, Keep-Alive, Proxy-Connection, TE, Transfer-Encoding,
 * Upgrade, Trailer, Proxy-Authenticate, Proxy-Authentication-Info, Proxy-Authorization). */
#define LP_FFI_CACHE_FIELDS                                                                        \
    "cache-control", "pragma", "if-match", "if-none-match", "if-modified-since",                   \
        "if-unmodified-since", "range", "if-range", "authorization", "content-length",             \
        "transfer-encoding", "expires", "date", "age", "etag", "last-modified", "vary",            \
        "set-cookie", "connection", "cache-status", "location", "content-location"
int lp_ffi_cache_fields(void *r, int resp);
int lp_ffi_cache_store_fields(void *r, void *zone, const char *key, size_t klen, const char *sec,
                              size_t slen, const char *meta, size_t mlen, double keep);
/* key: the default cache key, "GET " scheme "://" host (lower-case) URI, as the cache
 * plugin's default_key made it from req:scheme(), req:host() and req:uri(). */
int lp_ffi_cache_key(void *r, lp_str_t *out);
/* The common miss's Cache-Status, "luaproxy; fwd=uri-miss; fwd-status=STATUS" and, when stored,
 * "; stored; ttl=FLOOR(TTL)", added to a response that has none (cache2). */
int lp_ffi_cache_miss_status(void *r, int status, int stored, double ttl);
/* The engine's run of the plugin's common miss (cache_native.c). learn: what the plugin
 * decided for this response (storable, meta.ttl, meta.ttl_source, keep_for's stale window,
 * meta.date or NaN, the flags below), kept to be replayed for responses of its status and
 * shape (and Cache-Control value) when the
 * engine ran this request's request phase (otherwise, or for a response of another shape,
 * nothing is kept). native_t0: when the engine looked this request up (its request time),
 * -1 when the plugin's request phase ran. */
/* flags: meta.must_revalidate, meta.no_cache, and whether the plugin stored every field but
 * the hop-by-hop ones (policy.stores_all_fields: a decision storing fewer is not replayed);
 * swr, sie: meta.stale_while_revalidate, _if_error, or -1. */
enum {
    LP_FFI_CACHE_LEARN_MUST_REVALIDATE = 1,
    LP_FFI_CACHE_LEARN_NO_CACHE = 2,
    LP_FFI_CACHE_LEARN_ALL_FIELDS = 4
};
int lp_ffi_cache_native_learn(void *r, int status, int storable, double ttl, const char *source,
                              size_t slen, double stale, double date, int flags, double swr,
                              double sie);
double lp_ffi_cache_native_t0(void *r);
/* The plugin served a plain hit on the looked-up entry (a GET without any field the policy
 * reads, fresh, no Vary): with status and the stored fields' lines (wire), its age at the
 * response time, that time and its TTL, for the engine to serve the next such hits on that
 * entry's head the same way while it is fresh, in every worker (kept with the entry:
 * lp_cache_entry_served_set). */
int lp_ffi_cache_native_hit(void *r, int status, const char *wire, size_t wlen, double age0,
                            double response_time, double ttl);

/* req:trailers() (resp 0: the client's request trailers) and req:resp_trailers() (resp 1:
 * the upstream's response trailers): their fields as "name: value\r\n" lines in *out (empty
 * when none came, or not yet), valid until the request ends. Always 0. */
int lp_ffi_trailers(void *r, int resp, lp_str_t *out);

#endif
