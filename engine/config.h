/* The configuration: a Lua file returning a table, validated against
 * lua/luaproxy/config_schema.lua and read into these C structs (config.c). A config is
 * immutable once loaded and shared read-only by all workers. */
#ifndef LP_CONFIG_H
#define LP_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include "log.h"
#include "realip.h"
#include "logw.h"

typedef struct {
    char *text; /* as written, "host:port" (owned) */
    struct sockaddr_storage addr;
    socklen_t addrlen;
} lp_addr_t;

typedef struct {
    lp_addr_t addr; /* an IP target's address; for a DNS name, text is "name:port" as
                       written and addrlen is 0 */
    unsigned weight;
    char *host;          /* owned: the DNS name, NULL for an IP address */
    int port;            /* a DNS name's port */
    lp_addr_t *resolved; /* owned: a DNS name's addresses when the config was loaded */
    size_t nresolved;
    int https; /* written as https://host[:port] */
} lp_target_conf_t;

/* The addresses a config target stands for: its own, or those its name resolved to. */
static inline const lp_addr_t *lp_target_addrs(const lp_target_conf_t *t, size_t *n)
{
    *n = t->host ? t->nresolved : 1;
    return t->host ? t->resolved : &t->addr;
}

/* hash_on: where the hash policy takes its key. */
typedef enum {
    LP_HASH_IP,
    LP_HASH_HEADER,
    LP_HASH_COOKIE,
    LP_HASH_PATH,
    LP_HASH_QUERY,
} lp_hash_on_t;

/* Statuses as a bitmap over 100..599. */
typedef struct {
    uint64_t bits[8];
} lp_status_set_t;

static inline int lp_status_in(const lp_status_set_t *s, int status)
{
    if (status < 100 || status > 599)
        return 0;
    unsigned i = (unsigned)(status - 100);
    return (int)((s->bits[i / 64] >> (i % 64)) & 1);
}

typedef struct {
    int active;                  /* active checks on */
    int active_http;             /* 1: GET path and check the status; 0: a TCP connect */
    char *path;                  /* owned */
    uint64_t interval, timeout;  /* ms */
    unsigned healthy, unhealthy; /* consecutive results that flip the state */
    lp_status_set_t active_statuses;
    unsigned passive_failures; /* consecutive failures that eject; 0: passive off */
    uint64_t ejection;         /* ms, doubled on every repeat up to 32x */
    lp_status_set_t passive_statuses;
} lp_health_conf_t;

typedef struct {
    char *name;                /* owned */
    lp_target_conf_t *targets; /* owned array */
    size_t ntargets;
    char *balance; /* owned: a policy name lp_balancer_find() knows */
    lp_hash_on_t hash_on;
    char *hash_name; /* owned: the header, cookie or query argument for hash_on */
    lp_health_conf_t health;
    unsigned retries;            /* further tries after the first */
    lp_status_set_t retry_on;    /* statuses that retry an idempotent, bodiless request */
    double retry_budget;         /* retries at most this share of recent requests (+3) */
    unsigned max_connections;    /* per worker: requests in flight beyond it wait or get 503 */
    unsigned max_pending;        /* per worker: requests that may wait for max_connections */
    uint64_t pending_timeout;    /* ms a request may wait for max_connections (then 503) */
    uint64_t total_timeout;      /* ms from the first try to the response head (504); 0: off */
    uint64_t dns_ttl;            /* ms between resolutions of DNS targets */
    unsigned keepalive;          /* idle pooled connections kept per target per worker */
    uint64_t keepalive_timeout;  /* ms an idle pooled connection is kept */
    unsigned keepalive_requests; /* requests per upstream connection before it is closed */
    int h2;                      /* protocol = "h2": HTTP/2 to the targets (h2_up.c) */
    unsigned max_streams;        /* h2: streams per connection (lowered by the peer's SETTINGS) */
    struct lp_tls_client_s *tls; /* owned reference (tls.h); NULL: plain HTTP to targets */
} lp_upstream_conf_t;

/* error_pages: a page in place of the proxy's own answer of one status (errpage.h). */
typedef struct {
    int status;      /* the status it replaces (400..599) */
    int send_status; /* the status sent (`status =`; the same by default) */
    int builtin;     /* the built-in answer (`false`: a route turning a global page off) */
    int has_vars;    /* the body has a "$": ${status}, ${reason}, ${detail} rendered per answer */
    char *content_type; /* owned; NULL when builtin */
    char *body;         /* owned: the file's bytes or `body`; NULL when empty */
    size_t body_len;
} lp_error_page_t;

#define LP_ERROR_PAGE_MAX (1024 * 1024) /* bytes of one page */

typedef struct {
    lp_error_page_t *pages; /* owned array of npages, a status at most once */
    size_t npages;
} lp_error_pages_t;

typedef struct {
    char *name;       /* owned: routes[i].name, or "route#N" (metrics' route label) */
    int has_upstream; /* 0: a handler or plugin must choose (routes[i].upstream absent) */
    char *host;       /* owned; NULL matches any host; "*.example.com" is a suffix wildcard */
    char *prefix;     /* owned; NULL when unset (strip_prefix needs it) */
    size_t prefix_len;
    int strip_prefix;
    int lua_parts;   /* LP_ROUTE_PLUGINS | LP_ROUTE_HANDLER: what the config gives it in Lua
                        (an admin API replace drops them) */
    size_t upstream; /* index into upstreams */
    lp_error_pages_t error_pages; /* over the config's, status by status */
} lp_route_conf_t;

enum { LP_ROUTE_PLUGINS = 1, LP_ROUTE_HANDLER = 2 }; /* lp_route_conf_t.lua_parts */

struct lp_tls_server_s;
struct lp_tls_client_s;

typedef struct {
    lp_addr_t addr;
    int backlog;
    struct lp_tls_server_s *tls; /* owned reference (tls.h); NULL: plain HTTP */
    int proxy_protocol;          /* connections start with a PROXY header (proxy_proto.h) */
    /* real_ip (realip.h): the client address from realip_header when the connection's
     * address is in `trusted`. ntrusted 0: off. */
    lp_cidr_t *trusted; /* owned array of ntrusted */
    size_t ntrusted;
    lp_realip_kind_t realip_kind;
    char *realip_header; /* owned: the header's name; NULL when off */
    int http2;           /* HTTP/2 too: ALPN h2 with TLS, else h2c by prior knowledge */
} lp_listen_conf_t;

/* The `http2` section: limits of HTTP/2 connections (h2.c). */
typedef struct {
    unsigned max_concurrent_streams, initial_window_size, max_header_list_size;
    unsigned hpack_table_size, max_resets, max_control_frames, max_continuations;
    uint64_t idle_timeout; /* ms */
    uint32_t max_requests;
} lp_h2_conf_t;

typedef struct {
    uint64_t connect, read, send, client_header, client_body, keepalive, drain, tunnel; /* ms */
} lp_timeouts_t;

typedef struct {
    size_t max_header_size; /* whole header section, request line excluded */
    size_t max_uri_size;
    uint64_t max_body_size; /* 0: unlimited */
    unsigned max_headers;
    unsigned max_connections; /* client connections per worker (0: unlimited) */
    unsigned path_norm;       /* LP_PATHN_* (normalize_path, merge_slashes) */
} lp_limits_t;

/* One member of a JSON access log line: its name and the template of its value. */
typedef struct {
    char *name;  /* owned */
    char *value; /* owned: a template of the access log variables */
} lp_log_field_t;

/* What an access log line looks like: the text template, or one JSON object per line. */
typedef struct {
    char *text;           /* owned: log.format (LP_ACCESS_FORMAT_DEFAULT when not set) */
    lp_log_field_t *json; /* owned array of njson, in member order (by name); NULL: text */
    size_t njson;
} lp_log_format_t;

#define LP_ADMIN_TOKEN_MIN 16   /* bytes: shorter tokens are refused (guessable) */
#define LP_ADMIN_TOKEN_MAX 4096 /* bytes */

/* metrics: GET /metrics (docs/metrics.md). */
typedef struct {
    int enabled;     /* workers count requests, bytes and latencies */
    double *buckets; /* owned: histogram bounds in seconds, increasing */
    unsigned nbuckets;
    unsigned max_series; /* label sets per plugin metric (beyond: the overflow series) */
} lp_metrics_conf_t;
/* `tracing`: W3C trace context and span export (engine/trace.c, docs/tracing.md). */
typedef struct {
    int enabled;          /* ids per request, traceparent sent upstream */
    int accept;           /* trust a valid incoming traceparent/tracestate */
    double sample;        /* ratio of new traces sampled (0..1) */
    int export_on;        /* tracing.export is set */
    lp_addr_t collector;  /* the collector's address (text owned: "host:port") */
    char *collector_host; /* owned: the Host header sent to it */
    char *collector_path; /* owned: "/v1/traces" */
    char *service_name;   /* owned: resource service.name */
    unsigned batch_size;  /* spans per POST at most */
    unsigned max_queue;   /* spans waiting per worker at most; more are dropped */
    uint64_t interval;    /* ms between flushes of a partial batch */
    uint64_t timeout;     /* ms a POST (connect to answer) may take */
} lp_trace_conf_t;

typedef struct {
    char *path; /* the config file (owned) */
    unsigned workers;
    lp_listen_conf_t *listen; /* owned array of nlisten */
    size_t nlisten;
    lp_upstream_conf_t *upstreams; /* owned array of nupstreams */
    size_t nupstreams;
    lp_route_conf_t *routes; /* owned array of nroutes */
    size_t nroutes;
    struct lp_router_s *router;   /* owned: the routes' conditions compiled (router.h) */
    char routes_fp[17];           /* lp_rtable_fingerprint of the routes (rtable.h), made once
                                     at load: what the admin overlay is checked and stamped
                                     with */
    struct lp_rtable_s *rtable;   /* owned reference: the route table a generation starts with
                                     (the routes, the admin overlay applied; rtable.h) */
    char *overlay_error;          /* owned; NULL: none. Under LP_OVERLAY_REPORT, why the
                                     overlay was not applied (rtable is the config's routes) */
    lp_error_pages_t error_pages; /* the proxy's own answers replaced, by status */
    lp_timeouts_t timeouts;
    lp_limits_t limits;
    lp_h2_conf_t h2;               /* the `http2` section */
    char *access_log;              /* owned; NULL: off; "-": stdout; "syslog" (access_out says) */
    lp_log_format_t access_format; /* log.format or log.json */
    lp_log_level_t log_level;
    /* log outputs, sampling and the writer (docs/access-log.md) */
    lp_log_output_t access_out;    /* where access lines go when access_log is set */
    lp_log_output_t error_out;     /* where the error log goes */
    int error_json;                /* error log lines are JSON objects (else text) */
    uint32_t log_sample;           /* requests logged per 2^32 (UINT32_MAX: all) */
    int log_always_status;         /* sampled out but status >= this: logged (0: no rule) */
    uint64_t log_always_slower_ms; /* sampled out but slower than this: logged (0: no rule) */
    uint64_t log_flush_ms;         /* a worker hands its lines over at least this often */
    size_t log_buffer;             /* bytes queued for the writer before lines drop */
    unsigned log_max_fields;       /* req:log_field() fields per request */
    lp_addr_t admin;               /* admin API address; admin.text NULL when off */
    char *pid_file;                /* owned, NULL when none */
    int watch;                     /* reload when the config, a plugin or a script changes */
    int client_abort_close;        /* client_abort = "close": a FIN after the request ends it */
    char **files; /* owned: certificate, key, CA and error page files it names (--watch) */
    size_t nfiles;
    int has_lua;                     /* plugins or route handlers: workers start a Lua VM */
    int global_plugins;              /* top-level plugins: every route may be routed by Lua */
    uint64_t lua_phase_timeout;      /* ms of wall clock a Lua phase may run without yielding */
    unsigned lua_max_timers;         /* timers pending per worker */
    uint64_t lua_init_timeout;       /* ms init_worker may wait in all */
    unsigned lua_max_running_timers; /* timers and spawned threads running per worker */
    char *json;                      /* owned: GET /config's body (secrets redacted); NULL: none */
    char *lua_config;                /* owned: the validated table for the workers' VMs, encoded by
                                        lua/luaproxy/transfer.lua; NULL: each VM evaluates the file */
    size_t lua_config_len;
    /* issue #18 (etcd.c): config_source as JSON, and the candidate document merged in
     * (lp_config_source_doc, for the workers' fallback evaluation); both owned, NULL: none */
    char *config_source;
    char *source_doc;
    /* The etcd document's part (config_source.lua: merged), for errors found after the load
     * (lp_config_relocate): its name ("etcd:KEY (revision N)") and the top-level keys it gave
     * (",routes,upstreams,"); both owned, NULL when no document was merged. */
    char *source_name;
    char *source_keys;
    struct lp_config_todo_s *todo; /* owned: what lp_config_materialise builds (the TLS
                                      settings); NULL once it ran */
    int materialised;              /* lp_config_materialise succeeded: addresses resolved,
                                      TLS contexts built; only such a config serves */
    /* shared: the dicts it declares, by name order. A reference each (engine/shdict.h
     * registry), taken when the config loads; the sizes apply when it becomes current. */
    struct lp_shdict_s **shdicts; /* owned array of nshdicts references */
    size_t *shdict_sizes;         /* owned: the declared capacity of each */
    size_t nshdicts;
    /* cache.zones: the response cache's zones it declares (engine/cache_store.h registry), a
     * reference each, taken when the config loads; the limits apply when it becomes current
     * (lp_config_apply_shared). */
    struct lp_cache_zone_s **cache_zones; /* owned array of ncache_zones references */
    size_t *cache_memory;                 /* owned: each zone's byte budget */
    size_t *cache_max_object;             /* owned: each zone's max_object_size */
    size_t *cache_disk_size;              /* owned: each zone's disk budget (0: no disk) */
    size_t ncache_zones;
    lp_metrics_conf_t metrics; /* the `metrics` section */
    lp_trace_conf_t tracing;   /* `tracing` */
    char *admin_token;         /* owned: admin.token_file's bearer token; NULL: no authentication
                                  (allowed only on a loopback admin.address) */
} lp_config_t;

#define LP_ACCESS_FORMAT_DEFAULT                                                                   \
    "$remote_addr - [$time_iso8601] \"$request\" $status $body_bytes_sent \"$http_referer\" "      \
    "\"$http_user_agent\" upstream=$upstream_addr rt=$request_time urt=$upstream_response_time"

/* Loads `path`: evaluates it once, validates it (plugins and handlers included) and reads
 * it. Parsing only: no name is resolved and no TLS context built yet (see below). Main
 * thread (a Lua state of its own). On failure returns LP_ECONFIG with `err` set to
 * "path: key.path: problem" (or Lua's own "path:line: message"). */
int lp_config_load(const char *path, lp_config_t **out, char *err, size_t errlen);
/* Whether lp_config_load makes GET /config's JSON (config->json): 1, but 0 in a process that
 * serves nothing (`luaproxy -t`, `-s`), where it is a third of the work at 100k routes. Set
 * before the first load, main thread. */
extern int lp_config_admin_json;
/* Whether configs loaded start their cache zones' disk tiers (cache_disk.h): only in a
 * serving process (main.c sets it), never for -t, -s or the tools, whose scan would race the
 * server's writes in the same directory. 0 by default. */
extern int lp_config_cache_disk;
/* What lp_config_load does with the admin API's overlay file (rtable.h): apply it, a failure
 * failing the load (LP_OVERLAY_APPLY, every serving load and -t); leave it out
 * (LP_OVERLAY_SKIP); or apply it, a failure kept in config->overlay_error and the config's
 * own routes used (LP_OVERLAY_REPORT: `luaproxy routes`, for explain). Main thread, set
 * before the load. */
enum { LP_OVERLAY_APPLY, LP_OVERLAY_SKIP, LP_OVERLAY_REPORT };
extern int lp_config_overlay;
/* The step after validation: resolves the listen, admin and target addresses (DNS targets
 * that do not resolve are a warning, not an error) and builds the TLS contexts (listener
 * certificates and keys, upstream client contexts and their CA files). I/O that may block,
 * so it touches nothing but c and may run on any thread (libuv's threadpool for a reload),
 * never on a loop that serves. Once per config; errors as lp_config_load's. */
int lp_config_materialise(lp_config_t *c, char *err, size_t errlen);
void lp_config_free(lp_config_t *c);
/* The etcd document file the next lp_config_load merges into a bootstrap (etcd.c sets it
 * around a reload it asked for); NULL: the last good copy. Main thread only. */
extern const char *lp_config_source_doc;

/* An error "PATH: key.path: ..." about a top-level key the etcd document gave becomes
 * "NAME: key.path: ..." (the bootstrap file holds no such line). name and keys as
 * lp_config_t's source_name and source_keys (NULL: nothing changes). */
void lp_config_relocate(const char *path, const char *name, const char *keys, char *err,
                        size_t errlen);
/* Gives every shared dict and cache zone c declares its declared size (a reload's commit:
 * cannot fail). */
void lp_config_apply_shared(const lp_config_t *c);
/* "host:port", "[v6]:port" or ":port" into a socket address (resolving names). */
int lp_addr_parse(const char *text, lp_addr_t *out, char *err, size_t errlen);
/* Splits "host:port", "[v6]:port" or ":port" (host "" then). */
int lp_addr_split(const char *text, char *host, size_t hostlen, int *port, char *err,
                  size_t errlen);
/* Whether host is an IPv4 or IPv6 address literal (no DNS needed). */
int lp_addr_is_ip(const char *host);
struct addrinfo;
/* The distinct addresses of a getaddrinfo answer, at most max, each with port and an owned
 * text "ip:port" / "[ip6]:port". Returns how many were filled (0 when out of memory). */
size_t lp_addr_from_ai(const struct addrinfo *ai, int port, lp_addr_t *out, size_t max);
/* Most addresses a DNS target contributes. */
#define LP_DNS_MAX_ADDRS 64

#endif
