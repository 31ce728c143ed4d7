-- The engine functions Lua calls (engine/lua_api.h; tests/unit/test_lua_api.c checks that
-- the two agree). Loaded once per VM.
local ffi = require "ffi"

ffi.cdef [[
typedef struct { const char *base; size_t len; } lp_str_t;
int lp_ffi_req_get(void *r, int what, lp_str_t *out);
int lp_ffi_header_get(void *r, int resp, const char *name, size_t nlen, int nth, lp_str_t *out);
int lp_ffi_header_count(void *r, int resp);
int lp_ffi_header_at(void *r, int resp, int i, lp_str_t *name, lp_str_t *value);
int lp_ffi_header_set(void *r, int resp, int mode, const char *name, size_t nlen, const char *value, size_t vlen);
int lp_ffi_set_path(void *r, const char *p, size_t n);
int lp_ffi_set_upstream(void *r, const char *name, size_t n);
int lp_ffi_set_target(void *r, const char *host, size_t n, int port);
int lp_ffi_set_hash_key(void *r, const char *key, size_t n);
void lp_ffi_set_body_limit(void *r, double n);
int lp_ffi_tls_get(void *r, int what, lp_str_t *out);
int lp_ffi_log_field(void *r, const char *name, size_t nlen, int kind, const char *value,
                     size_t vlen);
int lp_ffi_status(void *r);
int lp_ffi_set_status(void *r, int status);
int lp_ffi_respond_begin(void *r);
int lp_ffi_respond(void *r, int status, const char *body, size_t len);
int lp_ffi_sleep(double seconds);
int lp_ffi_body_read(void *r, double max, lp_str_t *out);
void lp_ffi_log(int level, const char *msg, size_t len);
double lp_ffi_now(void);
double lp_ffi_monotonic(void);
double lp_ffi_start_time(void *r);
int lp_ffi_worker_id(void);
int lp_ffi_last_failure(void *r, lp_str_t *addr, int *status);
int lp_ffi_upstream_find(const char *name, size_t n);
int lp_ffi_upstream_target(int ups, int op, const char *addr, size_t n, int weight);
int lp_ffi_upstream_target_at(int ups, int i, lp_str_t *addr, lp_str_t *state);
int *lp_ffi_guard_flag(void);
double lp_ffi_guard_expired(void);
const char *lp_ffi_guard_limit(void);
int lp_ffi_bg_new(double delay, int timer);
void *lp_ffi_ipset_new(void);
void lp_ffi_ipset_free(void *s);
int lp_ffi_ipset_add(void *s, const char *text, size_t len, int value);
int lp_ffi_ipset_add_file(void *s, const char *path, int value, char *err, size_t errlen);
int lp_ffi_ipset_build(void *s);
int lp_ffi_ipset_find(const void *s, const char *text, size_t len);
void *lp_ffi_geoip_open(const char *path, char *err, size_t errlen);
void lp_ffi_geoip_close(void *db);
int lp_ffi_geoip_country(void *db, const char *ip, size_t len, char out[3]);
int lp_ffi_bg_wait(double interval);
int lp_ffi_bg_cancel(int id);
int lp_ffi_bg_count(int running);
int lp_ffi_exiting(void);
typedef struct {
  const char *str; size_t len; double num; uint32_t flags; int type; int forcible; int stale;
} lp_shdict_val_t;
void *lp_ffi_shdict_find(const char *name, size_t n);
int lp_ffi_shdict_get(void *d, const char *k, size_t klen, int stale, lp_shdict_val_t *out);
int lp_ffi_shdict_store(void *d, int op, const char *k, size_t klen, lp_shdict_val_t *v, double exptime);
int lp_ffi_shdict_incr(void *d, const char *k, size_t klen, double step, int has_init, double init, double init_ttl, lp_shdict_val_t *out);
int lp_ffi_shdict_ttl(void *d, const char *k, size_t klen, lp_shdict_val_t *out);
typedef struct {
  int allowed; double remaining; double retry_after; double reset_after; int forcible;
} lp_shdict_gcra_t;
int lp_ffi_shdict_gcra(void *d, const char *k, size_t klen, double interval, double burst, double cost, lp_shdict_gcra_t *out);
int lp_ffi_shdict_expire(void *d, const char *k, size_t klen, double exptime);
void lp_ffi_shdict_flush_all(void *d);
int lp_ffi_shdict_flush_expired(void *d, int max);
int lp_ffi_shdict_keys(void *d, int max, lp_str_t **out);
int lp_ffi_shdict_push(void *d, const char *k, size_t klen, int left, lp_shdict_val_t *v);
int lp_ffi_shdict_pop(void *d, const char *k, size_t klen, int left, lp_shdict_val_t *out);
int lp_ffi_shdict_llen(void *d, const char *k, size_t klen);
double lp_ffi_shdict_capacity(void *d);
double lp_ffi_shdict_free_space(void *d);
void *lp_ffi_tcp_new(void);
void lp_ffi_tcp_free(void *s);
const char *lp_ffi_tcp_error(void *s);
void lp_ffi_tcp_timeouts(void *s, double connect_ms, double send_ms, double read_ms);
int lp_ffi_tcp_connect(void *s, const char *host, size_t hlen, int port, const char *pool, size_t plen, int pool_size);
int lp_ffi_tcp_sslhandshake(void *s, void *session, const char *name, size_t nlen, int verify, const char *ca);
void *lp_ffi_tcp_session(void *s);
void lp_ffi_tcp_session_free(void *session);
int lp_ffi_tcp_send(void *s, const char *data, size_t n);
int lp_ffi_tcp_receive(void *s, int mode, double size, const char *pat, size_t plen, int inclusive, lp_str_t *out);
int lp_ffi_tcp_close(void *s);
int lp_ffi_tcp_setkeepalive(void *s, double idle_ms, int pool_size);
int lp_ffi_tcp_reused(void *s);
typedef struct lp_hresp_s lp_hresp_t;
lp_hresp_t *lp_ffi_hresp_new(void);
void lp_ffi_hresp_free(lp_hresp_t *r);
void lp_ffi_hresp_reset(lp_hresp_t *r, int head_req, double max_body);
int lp_ffi_hresp_feed(lp_hresp_t *r, const char *data, size_t len);
int lp_ffi_hresp_eof(lp_hresp_t *r);
int lp_ffi_hresp_status(lp_hresp_t *r);
const char *lp_ffi_hresp_body(lp_hresp_t *r, int *len);
const char *lp_ffi_hresp_fields(lp_hresp_t *r, int *len);
int lp_ffi_hresp_reusable(lp_hresp_t *r);
int lp_ffi_hresp_recv(lp_hresp_t *r, void *sock, int max);
int lp_ffi_hresp_got(lp_hresp_t *r);
const char *lp_ffi_hresp_error(lp_hresp_t *r);
void *lp_ffi_router_builder(void);
int lp_ffi_router_route(void *b);
int lp_ffi_router_add(void *b, int kind, int mode, const char *name, size_t nlen, const char *value, size_t vlen, char *err, size_t errlen);
void *lp_ffi_router_finish(void *b, char *err, size_t errlen);
void lp_ffi_router_builder_free(void *b);
void lp_ffi_router_free(void *r);
int lp_ffi_router_nnames(void *r, int kind);
const char *lp_ffi_router_name(void *r, int kind, int i);
int lp_ffi_router_match(void *r, const lp_str_t *in, const lp_str_t *hvals, const lp_str_t *qvals, int from, int *meta, lp_str_t *names, lp_str_t *values);
int lp_ffi_router_shadows(void *r, int *pairs, int max);
long lp_ffi_path_normalize(char *p, size_t len, unsigned flags);
int lp_ffi_router_shadow_text(char *out, size_t n, int route, const char *name, int by, const char *by_name);
int lp_ffi_req_param(void *r, const char *name, size_t n, lp_str_t *out);
int lp_ffi_metric_new(int type, const char *name, const char *help, const char *labels, size_t labels_len, int nlabels, const double *bounds, int nbounds, int max_series, char *err, size_t errlen);
double *lp_ffi_metric_cells(int id);
int lp_ffi_metric_series(int id, const char *labels, size_t len);
int lp_ffi_trace_ids(void *r, char *out);

/* ---- waf: Hyperscan match collector (engine/waf_hs.c) ---- */
typedef struct lp_waf_hits {
  unsigned int n;
  unsigned int cap;
  unsigned int more;
  unsigned int *ids;
} lp_waf_hits_t;
int lp_ffi_waf_hs_collect(unsigned int id, unsigned long long from, unsigned long long to,
                          unsigned int flags, void *ctx);

/* ---- waf: the per-value pipeline (engine/waf_scan.c, engine/waf_transform.c) ---- */
typedef int (*lp_waf_hs_match_fn)(unsigned int id, unsigned long long from, unsigned long long to,
                                  unsigned int flags, void *ctx);
typedef int (*lp_waf_hs_scan_fn)(const void *db, const char *data, unsigned int length,
                                 unsigned int flags, void *scratch, lp_waf_hs_match_fn on_event,
                                 void *ctx);
typedef struct lp_waf_scan lp_waf_scan_t;
lp_waf_scan_t *lp_ffi_waf_scan_new(lp_waf_hs_scan_fn scan, unsigned nchains);
int lp_ffi_waf_scan_chain(lp_waf_scan_t *ws, unsigned id, unsigned parent, int step);
void lp_ffi_waf_scan_reset(lp_waf_scan_t *ws);
void lp_ffi_waf_scan_free(lp_waf_scan_t *ws);
int lp_ffi_waf_scan_db(lp_waf_scan_t *ws, const void *db);
long lp_ffi_waf_scan_values(lp_waf_scan_t *ws, unsigned chain, const void *db, void *scratch,
                            const char *const *vals, const size_t *lens, unsigned n,
                            const unsigned **hits);
long lp_ffi_waf_scan_steps(lp_waf_scan_t *ws, const unsigned *chains, unsigned nch,
                           const void *db, void *scratch, const char *const *vals,
                           const size_t *lens, unsigned n, const unsigned **hits);
typedef struct lp_waf_seg {
  const char *const *vals;
  const size_t *lens;
  unsigned long long *keys;
  unsigned n;
  unsigned gen;
} lp_waf_seg_t;
long lp_ffi_waf_scan_segs(lp_waf_scan_t *ws, const unsigned *chains, unsigned nch,
                          const void *db, void *scratch, lp_waf_seg_t *const *segs,
                          unsigned nseg, const unsigned long long *reads, unsigned nreads,
                          const unsigned **hits);
int lp_ffi_waf_scan_value(lp_waf_scan_t *ws, unsigned chain, const char *v, size_t n,
                          const char **out, size_t *olen);
int lp_ffi_waf_transform_id(const char *name);
size_t lp_ffi_waf_transform_bound(int step, size_t n);
long lp_ffi_waf_transform(int step, const char *in, size_t n, char *out);
/* ---- waf: operators in C (engine/waf_sqli.c, waf_xss.c, waf_validate.c) ---- */
typedef struct lp_waf_detect {
    unsigned from;
    unsigned to;
    char fp[8];
} lp_waf_detect_t;
int lp_ffi_waf_sqli(const char *v, size_t n, lp_waf_detect_t *out);
int lp_ffi_waf_xss(const char *v, size_t n, lp_waf_detect_t *out);
size_t lp_ffi_waf_byte_range(const unsigned char *bad, const char *v, size_t n);
size_t lp_ffi_waf_urlenc_invalid(const char *v, size_t n);
size_t lp_ffi_waf_utf8_invalid(const char *v, size_t n);

/* ---- waf: compiled databases shared by every VM of the process (engine/waf_db.c) ---- */
typedef int (*lp_waf_db_free_fn)(void *db);
void *lp_ffi_waf_db_acquire(const char *key, size_t len, const char **meta, size_t *meta_len);
void *lp_ffi_waf_db_publish(const char *key, size_t len, void *db, lp_waf_db_free_fn fre,
                            const char *meta, size_t meta_len, const char **meta_out,
                            size_t *meta_out_len);
void lp_ffi_waf_db_release(void *db);
enum {
  LP_WAF_DB_NONE = 0,
  LP_WAF_DB_PENDING = 1,
  LP_WAF_DB_READY = 2,
  LP_WAF_DB_FAILED = 3
};
int lp_ffi_waf_db_compile(const char *key, size_t len, unsigned n, const char *const *exprs,
                          const unsigned *flags, const unsigned *ids);
int lp_ffi_waf_db_get(const char *key, size_t len, void **db, const char **meta,
                      size_t *meta_len);
int lp_ffi_waf_db_count(void);
int lp_ffi_body_tee(void *r, double max);
int lp_ffi_body_teed(void *r, lp_str_t *out);
int lp_ffi_body_set(void *r, const char *p, size_t n);
int lp_ffi_set_query(void *r, const char *q, size_t n);

/* ---- auth plugins: cryptography (engine/crypto.c) ---- */
long lp_ffi_b64_decode(const char *in, size_t len, int url, char *out, size_t outlen);
int lp_ffi_digest(int md, const char *data, size_t len, char *out);
int lp_ffi_ct_equal(const char *a, size_t alen, const char *b, size_t blen);
int lp_ffi_passwd_verify(const char *pw, size_t pwlen, const char *hash, size_t hlen);
int lp_ffi_passwd_job(const char *pw, size_t pwlen, const char *hash, size_t hlen, void **job);
int lp_ffi_passwd_job_wait(void *job, int *result);
void lp_ffi_passwd_job_free(void *job);
void *lp_ffi_hmac_new(int md, const char *key, size_t klen);
void lp_ffi_hmac_free(void *h);
int lp_ffi_hmac_verify(void *h, const char *data, size_t dlen, const char *sig, size_t siglen);
void *lp_ffi_pkey_pem(const char *pem, size_t len, char *err, size_t errlen);
void *lp_ffi_pkey_rsa(const char *n, size_t nlen, const char *e, size_t elen);
void *lp_ffi_pkey_ec(int bits, const char *x, size_t xlen, const char *y, size_t ylen);
void *lp_ffi_pkey_ed25519(const char *x, size_t xlen);
void lp_ffi_pkey_free(void *k);
int lp_ffi_pkey_kind(void *k);
int lp_ffi_pkey_verify(void *k, int md, int pss, const char *data, size_t dlen, const char *sig,
                       size_t siglen);

/* ---- compression (engine/compress.c) ---- */
int lp_ffi_resp_compress(void *r, int coding, int level, double min_length);
void *lp_ffi_cache_zone(const char *name, size_t n);
int lp_ffi_cache_get(void *r, void *zone, const char *key, size_t klen, const char *sec,
                     size_t slen, lp_str_t *head, double *body_len);
int lp_ffi_cache_lock(void *r, void *zone, const char *key, size_t klen, double timeout);
int lp_ffi_cache_locked(void *zone, const char *key, size_t klen);
int lp_ffi_cache_wait(void *zone, const char *key, size_t klen, double seconds, int early);
int lp_ffi_cache_get_filling(void *r, void *zone, const char *key, size_t klen, const char *sec,
                             size_t slen, lp_str_t *head, double *hint);
int lp_ffi_cache_store(void *r, void *zone, const char *key, size_t klen, const char *sec,
                       size_t slen, const char *head, size_t hlen, double keep);
int lp_ffi_cache_put(void *zone, const char *key, size_t klen, const char *sec, size_t slen,
                     const char *head, size_t hlen, const char *body, size_t blen, double keep);
int lp_ffi_cache_respond(void *r, int status, const char *fields, size_t flen, const char *more,
                         size_t mlen, double first, double last, int flags);
int lp_ffi_cache_refresh(void *r, const char *head, size_t hlen, double keep);
int lp_ffi_cache_hit_room(void *r);
void lp_ffi_cache_room_no_status(int rc);
int lp_ffi_cache_wire_check(const char *fields, size_t flen);
double lp_ffi_cache_read(void *r, double first, char *dst, double n);
int lp_ffi_cache_window(void *r, double first, double n);
double lp_ffi_cache_upstream_length(void *r);
double lp_ffi_cache_purge(void *zone, int mode, const char *key, size_t klen);
void lp_ffi_cache_count(void *zone, int what);
int lp_ffi_trailers(void *r, int resp, lp_str_t *out);
int lp_ffi_cache_fields(void *r, int resp);
int lp_ffi_cache_store_fields(void *r, void *zone, const char *key, size_t klen, const char *sec,
                              size_t slen, const char *meta, size_t mlen, double keep);
int lp_ffi_cache_key(void *r, lp_str_t *out);
int lp_ffi_cache_miss_status(void *r, int status, int stored, double ttl);
int lp_ffi_cache_native_learn(void *r, int status, int storable, double ttl, const char *source,
                              size_t slen, double stale, double date, int flags, double swr,
                              double sie);
double lp_ffi_cache_native_t0(void *r);
int lp_ffi_cache_native_hit(void *r, int status, const char *wire, size_t wlen, double age0,
                            double response_time, double ttl);
]]

return {
  -- lp_ffi_req_get
  METHOD = 1, PATH = 2, URI = 3, QUERY = 4, HOST = 5, SCHEME = 6, CLIENT_IP = 7,
  UPSTREAM_NAME = 8, UPSTREAM_ADDR = 9, VERSION = 10,
  PEER_IP = 11, -- #14
  -- lp_ffi_tls_get
  TLS_PROTOCOL = 1, TLS_CIPHER = 2, TLS_SNI = 3, TLS_ALPN = 4, TLS_RESUMED = 5,
  TLS_CLIENT_VERIFIED = 6, TLS_CLIENT_SUBJECT = 7,
  -- lp_ffi_header_set modes
  HSET = 0, HADD = 1, HCLEAR = 2,
  -- lp_ffi_upstream_target ops
  TADD = 0, TREMOVE = 1, TWEIGHT = 2,
  -- return codes
  EINVAL = -201, ENOSPACE = -202, EFRAMING = -203, EPHASE = -204, ENOTFOUND = -205,
  EOTHER = -206,
  -- proxy.shared (engine/shdict.h): value types, store ops, return codes
  SD_TNIL = 0, SD_TBOOL = 1, SD_TNUM = 3, SD_TSTR = 4,
  SD_SET = 0, SD_ADD = 1, SD_REPLACE = 2, SD_SAFE = 4,
  SD_ERRORS = { [-301] = "exists", [-302] = "not found", [-303] = "no memory",
                [-304] = "not a number", [-305] = "value not a list", [-306] = "value is a list",
                [-307] = "bad argument" },
  -- req:last_failure() kinds (engine/proxy-t.h lp_fail_kind_t)
  FAILURES = { "connect", "timeout", "reset", "status", "protocol" },
  -- lp_ffi_hresp_feed/eof bits
  HR_HEAD = 1, HR_DONE = 2, HR_WAIT = 4, HR_ESOCK = -1,
  -- lp_ffi_trace_ids bits
  TRACE_SAMPLED = 1, TRACE_PARENT = 2, TRACE_RECORDED = 4,
  -- lp_ffi_body_teed results (engine/lua_api.h LP_FFI_TEE_*)
  TEE_NONE = 0, TEE_DONE = 1, TEE_OVER = 2, TEE_PARTIAL = 3, TEE_FAIL = 4,
  -- lp_ffi_pkey_kind (auth plugins)
  PKEY_RSA = 1, PKEY_P256 = 256, PKEY_P384 = 384, PKEY_ED25519 = 25519,
  -- the response cache (engine/cache_store.h): purge modes, counters
  CACHE_PURGE_KEY = 0, CACHE_PURGE_PREFIX = 1, CACHE_PURGE_ALL = 2,
  CACHE_C = { hit = 0, miss = 1, expired = 2, stale = 3, revalidated = 4, bypass = 5 },
  -- lp_ffi_cache_respond flags (engine/lua_api.h LP_FFI_CACHE_ONLY_HOOK, _FIELDS_CHECKED)
  CACHE_ONLY_HOOK = 1, CACHE_FIELDS_CHECKED = 2,
  -- lp_ffi_cache_fields: bit i-1 for the i-th name (engine/lua_api.h LP_FFI_CACHE_FIELDS)
  CACHE_FIELDS = { "cache-control", "pragma", "if-match", "if-none-match", "if-modified-since",
    "if-unmodified-since", "range", "if-range", "authorization", "content-length",
    "transfer-encoding", "expires", "date", "age", "etag", "last-modified", "vary",
    "set-cookie", "connection", "cache-status", "location", "content-location" },
}
