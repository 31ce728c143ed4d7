/* The admin API: a small HTTP/1.1 server on the main loop (never on a public listener).
 * One request per connection; JSON answers. Also `luaproxy -s` and the pid file. */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <lauxlib.h>
#include <lualib.h>
#include "health.h"
#include "http1.h"
#include "log.h"
#include "lua_vm.h"
#include "server.h"
#include "worker.h"

#define ADMIN_MAX_REQUEST 16384

struct lp_admin_s {
    uv_tcp_t tcp;
    lp_server_t *server;
    char *addr; /* owned: the address it listens on */
};

typedef struct {
    uv_tcp_t tcp;
    lp_admin_t *admin;
    lp_h1_t h1;
    char in[ADMIN_MAX_REQUEST];
    size_t inlen;
    char arena[ADMIN_MAX_REQUEST];
    lp_header_t headers[64];
    int answered;
    size_t body_off, body_len; /* the request body, in `in` (small bodies only) */
} admin_conn_t;

typedef struct {
    uv_write_t req;
    char *data; /* owned */
} admin_write_t;

/* ---- JSON ---- */

typedef struct {
    char *p;
    size_t len, cap;
} sbuf_t;

static void sb_put(sbuf_t *b, const char *s, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            return;
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
}

#define sb_lit(b, lit) sb_put((b), (lit), sizeof(lit) - 1)

static void sb_printf(sbuf_t *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_printf(sbuf_t *b, const char *fmt, ...)
{
    char tmp[1024];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    if (n > 0)
        sb_put(b, tmp, (size_t)n < sizeof(tmp) ? (size_t)n : sizeof(tmp) - 1);
}

static void sb_json_string(sbuf_t *b, const char *s)
{
    sb_put(b, "\"", 1);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            char e[2] = {'\\', (char)c};
            sb_put(b, e, 2);
        } else if (c < 0x20) {
            char e[8];
            snprintf(e, sizeof(e), "\\u%04x", c);
            sb_put(b, e, 6);
        } else {
            sb_put(b, (const char *)&c, 1);
        }
    }
    sb_put(b, "\"", 1);
}

/* ---- answers ---- */

static void on_conn_close(uv_handle_t *h)
{
    free(h->data);
}

static void on_written(uv_write_t *wr, int status)
{
    admin_write_t *w = (admin_write_t *)wr;
    admin_conn_t *c = wr->handle->data;
    free(w->data);
    free(w);
    LP_UNUSED(status);
    uv_close((uv_handle_t *)&c->tcp, on_conn_close);
}

static void respond(admin_conn_t *c, int status, const char *json)
{
    if (c->answered)
        return;
    int head = lp_h1_method(&c->h1) == HTTP_HEAD;
    c->answered = 1;
    uv_read_stop((uv_stream_t *)&c->tcp);
    size_t jlen = strlen(json);
    admin_write_t *w = malloc(sizeof(*w));
    char *data = malloc(jlen + 256);
    if (!w || !data) {
        free(w);
        free(data);
        uv_close((uv_handle_t *)&c->tcp, on_conn_close);
        return;
    }
    int n = snprintf(data, jlen + 256,
                     "HTTP/1.1 %d %s\r\nServer: luaproxy\r\nContent-Type: application/json\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, lp_h1_status_text(status), jlen + 1, head ? "" : json);
    if (!head)
        data[n++] = '\n';
    w->data = data;
    uv_buf_t buf = uv_buf_init(data, (unsigned)n);
    if (uv_write(&w->req, (uv_stream_t *)&c->tcp, &buf, 1, on_written)) {
        free(data);
        free(w);
        uv_close((uv_handle_t *)&c->tcp, on_conn_close);
    }
}

static void respond_error(admin_conn_t *c, int status, const char *msg)
{
    sbuf_t b = {0};
    sb_lit(&b, "{\"ok\":false,\"error\":");
    sb_json_string(&b, msg);
    sb_lit(&b, "}");
    respond(c, status, b.p ? b.p : "{}");
    free(b.p);
}

static void iso_time(double t, char *out, size_t n)
{
    time_t s = (time_t)t;
    struct tm tm;
    gmtime_r(&s, &tm);
    strftime(out, n, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static void handle_status(admin_conn_t *c)
{
    lp_server_t *s = c->admin->server;
    uint64_t conns, reqs;
    lp_workers_stats(s->workers, s->nworkers, &conns, &reqs);
    char loaded[32], started[32];
    iso_time(lp_gen_current->loaded_at, loaded, sizeof(loaded));
    iso_time(s->started_at, started, sizeof(started));
    sbuf_t b = {0};
    sb_printf(&b,
              "{\"ok\":true,\"version\":\"%s\",\"pid\":%d,\"started_at\":\"%s\",\"uptime\":%.0f,"
              "\"generation\":%llu,\"loaded_at\":\"%s\",\"workers\":%u,\"connections\":%llu,"
              "\"requests\":%llu,\"reloads\":%llu,\"reloads_failed\":%llu,\"config\":",
              LP_VERSION, (int)getpid(), started, (double)time(NULL) - s->started_at,
              (unsigned long long)lp_gen_current->id, loaded, s->nworkers,
              (unsigned long long)conns, (unsigned long long)reqs, (unsigned long long)s->reloads,
              (unsigned long long)s->reloads_failed);
    sb_json_string(&b, s->config_path);
    sb_lit(&b, "}");
    respond(c, 200, b.p ? b.p : "{}");
    free(b.p);
}

static void handle_reload(admin_conn_t *c)
{
    lp_server_t *s = c->admin->server;
    char err[1024];
    uint64_t t0 = uv_hrtime();
    if (lp_server_reload(s, err, sizeof(err))) {
        sbuf_t b = {0};
        sb_printf(&b, "{\"ok\":false,\"generation\":%llu,\"error\":",
                  (unsigned long long)lp_gen_current->id);
        sb_json_string(&b, err);
        sb_lit(&b, "}");
        respond(c, 500, b.p ? b.p : "{}");
        free(b.p);
        return;
    }
    char body[160];
    snprintf(body, sizeof(body), "{\"ok\":true,\"generation\":%llu,\"took_ms\":%.3f}",
             (unsigned long long)lp_gen_current->id, (double)(uv_hrtime() - t0) / 1e6);
    respond(c, 200, body);
}

void lp_admin_snapshot(lp_server_t *s)
{
    /* The config as JSON, secrets redacted (lua/luaproxy/admin.lua), made when the config
     * loaded and taken right after its generation went live: GET /config shows what
     * serves, not what the file says now. */
    const char *json = lp_gen_current ? lp_gen_current->config->json : NULL;
    free(s->config_json);
    s->config_json = json ? strdup(json) : NULL;
}

static void handle_config(admin_conn_t *c)
{
    const char *json = c->admin->server->config_json;
    if (json)
        respond(c, 200, json);
    else
        respond_error(c, 500, "the config could not be encoded as JSON");
}

static void handle_upstreams(admin_conn_t *c)
{
    const lp_config_t *cfg = lp_gen_current->config;
    uint64_t now = lp_health_now();
    sbuf_t b = {0};
    sb_lit(&b, "{\"ok\":true,\"upstreams\":[");
    for (size_t i = 0; i < cfg->nupstreams; i++) {
        const lp_upstream_conf_t *u = &cfg->upstreams[i];
        sb_printf(&b, "%s{\"name\":", i ? "," : "");
        sb_json_string(&b, u->name);
        sb_printf(&b, ",\"balance\":\"%s\",\"active_checks\":%s,\"targets\":[", u->balance,
                  u->health.active ? "true" : "false");
        int first = 1;
        for (size_t j = 0; j < u->ntargets; j++) {
            /* A DNS target lists the addresses its name had when the config was loaded. */
            size_t na;
            const lp_addr_t *addrs = lp_target_addrs(&u->targets[j], &na);
            for (size_t k = 0; k < na; k++) {
                lp_health_t *h = lp_health_get(addrs[k].text);
                if (!h)
                    continue;
                sb_printf(&b, "%s{\"address\":", first ? "" : ",");
                first = 0;
                sb_json_string(&b, h->addr);
                if (u->targets[j].host) {
                    sb_lit(&b, ",\"name\":");
                    sb_json_string(&b, u->targets[j].addr.text);
                }
                sb_printf(&b,
                          ",\"weight\":%u,\"state\":\"%s\",\"consecutive_failures\":%u,"
                          "\"failures\":%llu,\"successes\":%llu,\"ejections\":%u}",
                          u->targets[j].weight, lp_health_state(h, now),
                          __atomic_load_n(&h->consecutive_failures, __ATOMIC_RELAXED),
                          (unsigned long long)__atomic_load_n(&h->failures, __ATOMIC_RELAXED),
                          (unsigned long long)__atomic_load_n(&h->successes, __ATOMIC_RELAXED),
                          __atomic_load_n(&h->ejections, __ATOMIC_RELAXED));
            }
        }
        sb_lit(&b, "]}");
    }
    sb_lit(&b, "]}");
    respond(c, 200, b.p ? b.p : "{}");
    free(b.p);
}

/* POST /upstreams/NAME/targets/ADDR with "drain", "disable" or "enable" in the body (JSON
 * {"state": ...}) or as ?state=. */
static void handle_target_state(admin_conn_t *c, lp_str_t rest, lp_str_t query)
{
    const lp_config_t *cfg = c->admin->server ? lp_gen_current->config : NULL;
    const char *slash = memchr(rest.base, '/', rest.len);
    if (!slash) {
        respond_error(c, 404, "use POST /upstreams/NAME/targets/ADDRESS");
        return;
    }
    lp_str_t name = {rest.base, (size_t)(slash - rest.base)};
    lp_str_t tail = {slash + 1, rest.len - name.len - 1};
    if (tail.len <= 8 || memcmp(tail.base, "targets/", 8) != 0) {
        respond_error(c, 404, "use POST /upstreams/NAME/targets/ADDRESS");
        return;
    }
    lp_str_t addr = {tail.base + 8, tail.len - 8};
    const lp_upstream_conf_t *u = NULL;
    for (size_t i = 0; i < cfg->nupstreams; i++)
        if (strlen(cfg->upstreams[i].name) == name.len &&
            memcmp(cfg->upstreams[i].name, name.base, name.len) == 0)
            u = &cfg->upstreams[i];
    const lp_addr_t *t = NULL;
    for (size_t j = 0; u && j < u->ntargets; j++) {
        size_t na;
        const lp_addr_t *addrs = lp_target_addrs(&u->targets[j], &na);
        for (size_t k = 0; k < na; k++)
            if (strlen(addrs[k].text) == addr.len &&
                memcmp(addrs[k].text, addr.base, addr.len) == 0)
                t = &addrs[k];
    }
    if (!t) {
        respond_error(c, 404, u ? "no such target in that upstream" : "no such upstream");
        return;
    }
    char want[32] = "";
    lp_str_t q = lp_kv_find(query, '&', "state", 5);
    if (q.base && q.len < sizeof(want)) {
        memcpy(want, q.base, q.len);
        want[q.len] = 0;
    } else if (c->body_len) {
        c->in[c->body_off + c->body_len < sizeof(c->in) ? c->body_off + c->body_len
                                                        : sizeof(c->in) - 1] = 0;
        const char *body = c->in + c->body_off;
        snprintf(want, sizeof(want), "%s",
                 strstr(body, "disable")  ? "disable"
                 : strstr(body, "drain")  ? "drain"
                 : strstr(body, "enable") ? "enable"
                                          : "");
    }
    int state = strcmp(want, "drain") == 0     ? LP_TARGET_DRAINED
                : strcmp(want, "disable") == 0 ? LP_TARGET_DISABLED
                : strcmp(want, "enable") == 0  ? LP_TARGET_ENABLED
                                               : -1;
    if (state < 0) {
        respond_error(c, 400, "say drain, disable or enable (body {\"state\": ...} or ?state=)");
        return;
    }
    lp_health_t *h = lp_health_get(t->text);
    if (!h) {
        respond_error(c, 500, "out of memory");
        return;
    }
    __atomic_store_n(&h->admin_state, state, __ATOMIC_RELAXED);
    if (state == LP_TARGET_ENABLED) {
        /* Re-enabling also forgives a passive ejection. */
        __atomic_store_n(&h->ejected_until, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&h->ejections, 0, __ATOMIC_RELAXED);
        __atomic_store_n(&h->consecutive_failures, 0, __ATOMIC_RELAXED);
    }
    lp_log_notice("admin: upstream %s target %s: %s", u->name, h->addr, want);
    sbuf_t b = {0};
    sb_lit(&b, "{\"ok\":true,\"address\":");
    sb_json_string(&b, h->addr);
    sb_printf(&b, ",\"state\":\"%s\"}", lp_health_state(h, lp_health_now()));
    respond(c, 200, b.p ? b.p : "{}");
    free(b.p);
}

static void dispatch(admin_conn_t *c)
{
    lp_str_t path = c->h1.path, query = {"", 0};
    const char *q = memchr(path.base, '?', path.len);
    if (q) {
        query = (lp_str_t){q + 1, path.len - (size_t)(q + 1 - path.base)};
        path.len = (size_t)(q - path.base);
    }
    uint8_t m = lp_h1_method(&c->h1);
    if (path.len > 11 && memcmp(path.base, "/upstreams/", 11) == 0) {
        if (m != HTTP_POST)
            respond_error(c, 405, "use POST /upstreams/NAME/targets/ADDRESS");
        else
            handle_target_state(c, (lp_str_t){path.base + 11, path.len - 11}, query);
        return;
    }
    if (LP_STR_IEQ(path, "/upstreams")) {
        if (m != HTTP_GET && m != HTTP_HEAD)
            respond_error(c, 405, "use GET /upstreams");
        else
            handle_upstreams(c);
        return;
    }
    if (LP_STR_IEQ(path, "/status")) {
        if (m != HTTP_GET && m != HTTP_HEAD)
            respond_error(c, 405, "use GET /status");
        else
            handle_status(c);
    } else if (LP_STR_IEQ(path, "/reload")) {
        if (m != HTTP_POST)
            respond_error(c, 405, "use POST /reload");
        else
            handle_reload(c);
    } else if (LP_STR_IEQ(path, "/config")) {
        if (m != HTTP_GET && m != HTTP_HEAD)
            respond_error(c, 405, "use GET /config");
        else
            handle_config(c);
    } else {
        respond_error(c, 404,
                      "no such endpoint (GET /status, POST /reload, GET /config, "
                      "GET /upstreams, POST /upstreams/NAME/targets/ADDRESS)");
    }
}

/* ---- connections ---- */

static void on_alloc(uv_handle_t *h, size_t hint, uv_buf_t *buf)
{
    admin_conn_t *c = h->data;
    *buf = uv_buf_init(c->in + c->inlen, (unsigned)(sizeof(c->in) - c->inlen));
}

static void on_read(uv_stream_t *st, ssize_t nread, const uv_buf_t *buf)
{
    admin_conn_t *c = st->data;
    if (nread < 0 || (nread == 0 && c->inlen == sizeof(c->in))) {
        if (!c->answered) {
            c->answered = 1;
            uv_close((uv_handle_t *)&c->tcp, on_conn_close);
        }
        return;
    }
    if (c->answered || nread == 0)
        return;
    size_t start = c->inlen, used = 0;
    c->inlen += (size_t)nread;
    for (;;) {
        lp_h1_event_t ev = lp_h1_execute(&c->h1, c->in + start, c->inlen - start, &used);
        start += used;
        if (ev == LP_H1_HEAD) {
            lp_h1_resume(&c->h1);
            continue; /* read the (small) body too, then answer */
        }
        if (ev == LP_H1_DONE || ev == LP_H1_UPGRADE) {
            dispatch(c);
            return;
        }
        if (ev == LP_H1_ERROR) {
            respond_error(c, c->h1.err_status ? c->h1.err_status : 400, "bad request");
            return;
        }
        break;
    }
    if (c->inlen == sizeof(c->in))
        respond_error(c, 413, "request too large");
}

static int on_admin_body(lp_h1_t *h, const char *at, size_t len)
{
    admin_conn_t *c = h->ud;
    if (!c->body_len)
        c->body_off = (size_t)(at - c->in);
    if ((size_t)(at - c->in) == c->body_off + c->body_len)
        c->body_len += len; /* contiguous in `in`: keep it (chunked bodies keep the first) */
    return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
    lp_admin_t *a = server->data;
    if (status < 0)
        return;
    admin_conn_t *c = calloc(1, sizeof(*c));
    if (!c)
        return;
    c->admin = a;
    uv_tcp_init(server->loop, &c->tcp);
    c->tcp.data = c;
    if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
        uv_close((uv_handle_t *)&c->tcp, on_conn_close);
        return;
    }
    lp_h1_init(&c->h1, HTTP_REQUEST, c, on_admin_body);
    c->h1.max_header_size = sizeof(c->arena) / 2;
    c->h1.max_uri_size = 2048;
    lp_h1_set_storage(&c->h1, c->arena, sizeof(c->arena), c->headers, 64);
    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read);
}

static void on_admin_close(uv_handle_t *h)
{
    lp_admin_t *a = h->data;
    free(a->addr);
    free(a);
}

void lp_admin_stop(lp_server_t *s)
{
    if (!s->admin)
        return;
    uv_close((uv_handle_t *)&s->admin->tcp, on_admin_close);
    s->admin = NULL;
}

int lp_admin_update(lp_server_t *s)
{
    const lp_addr_t *want = &lp_gen_current->config->admin;
    if (s->admin && want->text && strcmp(s->admin->addr, want->text) == 0)
        return 0;
    if (!want->text) {
        lp_admin_stop(s);
        return 0;
    }
    lp_admin_t *a = calloc(1, sizeof(*a));
    if (!a || !(a->addr = strdup(want->text))) {
        free(a);
        return -1;
    }
    a->server = s;
    uv_tcp_init(s->loop, &a->tcp);
    a->tcp.data = a;
    int rc = uv_tcp_bind(&a->tcp, (const struct sockaddr *)&want->addr, 0);
    if (!rc)
        rc = uv_listen((uv_stream_t *)&a->tcp, 64, on_connection);
    if (rc) {
        lp_log_error("admin API on %s: %s", want->text, uv_strerror(rc));
        uv_close((uv_handle_t *)&a->tcp, on_admin_close);
        return -1; /* at start-up: fatal; after a reload the old listener stays */
    }
    lp_admin_stop(s);
    s->admin = a;
    lp_log_notice("admin API on http://%s", want->text);
    return 0;
}

/* ---- luaproxy -s ---- */

static int admin_request(const lp_addr_t *addr, const char *req, char *out, size_t outlen)
{
    int fd = socket(addr->addr.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {30, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (const struct sockaddr *)&addr->addr, addr->addrlen) < 0 ||
        write(fd, req, strlen(req)) < 0) {
        close(fd);
        return -1;
    }
    size_t len = 0;
    ssize_t n;
    while (len < outlen - 1 && (n = read(fd, out + len, outlen - 1 - len)) > 0)
        len += (size_t)n;
    out[len] = 0;
    close(fd);
    return (int)len;
}

static long read_pid(const char *path)
{
    FILE *f = fopen(path, "r");
    long pid = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld", &pid) != 1)
        pid = 0;
    fclose(f);
    return pid;
}

int lp_admin_signal(const lp_config_t *cfg, const char *name)
{
    int reload = strcmp(name, "reload") == 0, stop = strcmp(name, "stop") == 0;
    if (!reload && !stop) {
        fprintf(stderr, "luaproxy: -s takes reload or stop\n");
        return 2;
    }
    if (reload && cfg->admin.text) {
        char resp[8192];
        int n = admin_request(&cfg->admin,
                              "POST /reload HTTP/1.1\r\nHost: admin\r\nContent-Length: 0\r\n"
                              "Connection: close\r\n\r\n",
                              resp, sizeof(resp));
        if (n <= 0) {
            fprintf(stderr, "luaproxy: cannot reach the admin API on %s: %s\n", cfg->admin.text,
                    strerror(errno));
            return 1;
        }
        const char *body = strstr(resp, "\r\n\r\n");
        printf("%s", body ? body + 4 : resp);
        return strncmp(resp, "HTTP/1.1 200", 12) == 0 ? 0 : 1;
    }
    if (!cfg->pid_file) {
        fprintf(stderr, "luaproxy: the config has neither admin.address nor pid_file: no way to "
                        "find the running instance\n");
        return 1;
    }
    long pid = read_pid(cfg->pid_file);
    if (pid <= 0 || kill((pid_t)pid, reload ? SIGHUP : SIGTERM) < 0) {
        fprintf(stderr, "luaproxy: no running instance in %s%s%s\n", cfg->pid_file,
                pid > 0 ? ": " : "", pid > 0 ? strerror(errno) : "");
        return 1;
    }
    printf("sent %s to %ld (the outcome is in its log)\n", reload ? "SIGHUP" : "SIGTERM", pid);
    return 0;
}

void lp_pidfile_write(const lp_config_t *cfg)
{
    if (!cfg->pid_file)
        return;
    FILE *f = fopen(cfg->pid_file, "w");
    if (!f) {
        lp_log_warn("pid_file %s: %s", cfg->pid_file, strerror(errno));
        return;
    }
    fprintf(f, "%d\n", (int)getpid());
    fclose(f);
}

void lp_pidfile_remove(const lp_config_t *cfg)
{
    if (cfg->pid_file && read_pid(cfg->pid_file) == (long)getpid())
        unlink(cfg->pid_file);
}
