/* The config: engine/config.h. Three steps, each in its own part below:
 *   1. evaluate the file once, in a Lua state of its own (the config VM), and validate the
 *      table against lua/luaproxy/config_schema.lua (lua/luaproxy/config.lua), plugins and
 *      handlers included (lua/luaproxy/runtime.lua, as the workers will load them);
 *   2. read the validated table, defaults filled in, into the C structs (no checks left
 *      but out of memory: every type and range was checked in step 1);
 *   3. materialise it (lp_config_materialise): resolve addresses (DNS) and build the TLS
 *      contexts (certificates, keys, CA files). That is I/O, not parsing, and may block
 *      (a slow resolver, a file on a slow disk), so it is a call of its own that touches
 *      nothing but the config: a reload runs it on libuv's threadpool (main.c), never on a
 *      loop that serves. Steps 1 and 2 are lp_config_load. */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <openssl/crypto.h>
#include <openssl/tls1.h>
#include <uv.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include <luajit.h>
#include "common.h"
#include "config.h"
#include "pathnorm.h"
#include "balancer.h"
#include "lua_vm.h"
#include "shdict.h"
#include "cache_store.h"
#include "log.h"
#include "route.h"
#include "rtable.h"
#include "tls.h"

/* ---- addresses ---- */

int lp_addr_split(const char *text, char *host, size_t hostlen, int *port, char *err, size_t errlen)
{
    const char *colon, *port_s;
    size_t n;
    if (text[0] == '[') {
        const char *end = strchr(text, ']');
        if (!end || end[1] != ':') {
            snprintf(err, errlen, "\"%s\" is not [ipv6]:port", text);
            return LP_EINVAL;
        }
        n = (size_t)(end - text - 1);
        colon = end + 1;
        text++;
    } else {
        colon = strrchr(text, ':');
        if (!colon) {
            snprintf(err, errlen, "\"%s\" has no :port", text);
            return LP_EINVAL;
        }
        n = (size_t)(colon - text);
    }
    if (n >= hostlen) {
        snprintf(err, errlen, "\"%s\": host too long", text);
        return LP_EINVAL;
    }
    memcpy(host, text, n);
    host[n] = 0;
    port_s = colon + 1;
    char *endp;
    errno = 0;
    long pn = strtol(port_s, &endp, 10);
    if (!*port_s || *endp || errno || pn < 0 || pn > 65535) {
        snprintf(err, errlen, "\"%s\" has an invalid port", text);
        return LP_EINVAL;
    }
    *port = (int)pn;
    return 0;
}

int lp_addr_is_ip(const char *host)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1;
}

size_t lp_addr_from_ai(const struct addrinfo *ai, int port, lp_addr_t *out, size_t max)
{
    size_t n = 0;
    for (; ai && n < max; ai = ai->ai_next) {
        if ((ai->ai_family != AF_INET && ai->ai_family != AF_INET6) ||
            ai->ai_addrlen > sizeof(out->addr))
            continue;
        char ip[INET6_ADDRSTRLEN], text[INET6_ADDRSTRLEN + 10];
        const void *a = ai->ai_family == AF_INET
                            ? (const void *)&((struct sockaddr_in *)ai->ai_addr)->sin_addr
                            : (const void *)&((struct sockaddr_in6 *)ai->ai_addr)->sin6_addr;
        if (!inet_ntop(ai->ai_family, a, ip, sizeof(ip)))
            continue;
        snprintf(text, sizeof(text), ai->ai_family == AF_INET ? "%s:%d" : "[%s]:%d", ip, port);
        int dup = 0;
        for (size_t i = 0; i < n && !dup; i++)
            dup = strcmp(out[i].text, text) == 0;
        if (dup)
            continue;
        memset(&out[n], 0, sizeof(out[n]));
        memcpy(&out[n].addr, ai->ai_addr, ai->ai_addrlen);
        out[n].addrlen = ai->ai_addrlen;
        if (ai->ai_family == AF_INET)
            ((struct sockaddr_in *)&out[n].addr)->sin_port = htons((uint16_t)port);
        else
            ((struct sockaddr_in6 *)&out[n].addr)->sin6_port = htons((uint16_t)port);
        if (!(out[n].text = strdup(text)))
            break;
        n++;
    }
    return n;
}

int lp_addr_parse(const char *text, lp_addr_t *out, char *err, size_t errlen)
{
    char host[256];
    int port;
    memset(out, 0, sizeof(*out));
    int rc = lp_addr_split(text, host, sizeof(host), &port, err, errlen);
    if (rc)
        return rc;
    if (!host[0] || strcmp(host, "*") == 0)
        strcpy(host, "0.0.0.0");
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_NUMERICSERV | AI_ADDRCONFIG;
    char pbuf[8];
    snprintf(pbuf, sizeof(pbuf), "%d", port);
    rc = getaddrinfo(host, pbuf, &hints, &res);
    if (rc == EAI_ADDRFAMILY || rc == EAI_NONAME) {
        hints.ai_flags = AI_NUMERICSERV;
        rc = getaddrinfo(host, pbuf, &hints, &res);
    }
    if (rc || !res) {
        snprintf(err, errlen, "cannot resolve \"%s\": %s", host, gai_strerror(rc));
        return LP_EINVAL;
    }
    memcpy(&out->addr, res->ai_addr, res->ai_addrlen);
    out->addrlen = res->ai_addrlen;
    freeaddrinfo(res);
    out->text = strdup(text);
    return out->text ? 0 : LP_ENOMEM;
}

/* ---- step 2: reading the validated table ---- */

/* The TLS settings as read in step 2, waiting for step 3 (lp_config_t.todo). */
struct lp_config_todo_s {
    lp_tls_server_conf_t *server_tls; /* owned, per listen entry; ncerts 0: plain HTTP */
    lp_tls_client_conf_t *client_tls; /* owned, per upstream */
    unsigned char *client_tls_on;     /* owned, per upstream: whether it speaks TLS */
};

/* The reader's state (steps 2 and 3). */
typedef struct {
    lua_State *L; /* NULL in step 3 */
    const char *file;
    char *err;
    size_t errlen;
    lp_config_t *c;                   /* the config being built */
    int oom;                          /* a copy failed: the load fails */
    lp_tls_server_conf_t *server_tls; /* borrowed: c->todo's */
    lp_tls_client_conf_t *client_tls; /* borrowed: c->todo's */
    unsigned char *client_tls_on;     /* borrowed: c->todo's */
} rctx_t;

static int fail(rctx_t *r, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(rctx_t *r, const char *path, const char *fmt, ...)
{
    int n = snprintf(r->err, r->errlen, "%s: %s: ", r->file, path);
    if (n < 0 || (size_t)n >= r->errlen)
        return LP_ECONFIG;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->err + n, r->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return LP_ECONFIG;
}

static char *dup_str(rctx_t *r, const char *s);

/* The table at the top of the stack as JSON (lua-cjson), NULL when it cannot be. */
static char *encode_json(rctx_t *r)
{
    lua_State *L = r->L;
    int top = lua_gettop(L);
    char *out = NULL;
    lua_getglobal(L, "require");
    lua_pushliteral(L, "cjson.safe");
    if (lua_pcall(L, 1, 1, 0) == 0) {
        lua_getfield(L, -1, "encode");
        lua_pushvalue(L, top);
        if (lua_pcall(L, 1, 1, 0) == 0 && lua_type(L, -1) == LUA_TSTRING)
            out = dup_str(r, lua_tostring(L, -1));
    }
    lua_settop(L, top);
    return out;
}

/* Field k of the table at the top of the stack. Types were checked in step 1. */
static double get_num(lua_State *L, const char *k)
{
    lua_getfield(L, -1, k);
    double d = lua_tonumber(L, -1);
    lua_pop(L, 1);
    return d;
}

/* A duration (seconds) in ms. */
static uint64_t get_ms(lua_State *L, const char *k)
{
    return (uint64_t)(get_num(L, k) * 1000.0 + 0.5);
}

static unsigned get_uint(lua_State *L, const char *k)
{
    return (unsigned)get_num(L, k);
}

static int get_bool(lua_State *L, const char *k)
{
    lua_getfield(L, -1, k);
    int b = lua_toboolean(L, -1);
    lua_pop(L, 1);
    return b;
}

static char *dup_str(rctx_t *r, const char *s)
{
    char *d = strdup(s);
    if (!d)
        r->oom = 1;
    return d;
}

/* A copy of string field k, NULL when absent. */
static char *get_str(rctx_t *r, const char *k)
{
    lua_getfield(r->L, -1, k);
    char *s = lua_type(r->L, -1) == LUA_TSTRING ? dup_str(r, lua_tostring(r->L, -1)) : NULL;
    lua_pop(r->L, 1);
    return s;
}

/* Pushes field k and returns 1 when it is a table; pushes nothing otherwise. */
static int push_table(lua_State *L, const char *k)
{
    lua_getfield(L, -1, k);
    if (lua_istable(L, -1))
        return 1;
    lua_pop(L, 1);
    return 0;
}

/* *p (owned) made relative to the config file's directory, and listed in c->files, which
 * --watch follows. */
static void file_path(rctx_t *r, char **p)
{
    const char *slash = strrchr(r->file, '/');
    if ((*p)[0] != '/' && slash) {
        size_t dlen = (size_t)(slash - r->file), n = dlen + 1 + strlen(*p) + 1;
        char *full = malloc(n);
        if (!full) {
            r->oom = 1;
            return;
        }
        snprintf(full, n, "%.*s/%s", (int)dlen, r->file, *p);
        free(*p);
        *p = full;
    }
    char **a = realloc(r->c->files, (r->c->nfiles + 1) * sizeof(char *));
    if (a)
        r->c->files = a;
    if (!a || !(a[r->c->nfiles] = dup_str(r, *p)))
        r->oom = 1;
    else
        r->c->nfiles++;
}

/* A file named by field k (NULL when absent). */
static char *get_path(rctx_t *r, const char *k)
{
    char *s = get_str(r, k);
    if (s)
        file_path(r, &s);
    return s;
}

/* A list of strings (file names with paths set). */
static char **get_strings(rctx_t *r, const char *k, int paths, size_t *n)
{
    *n = 0;
    if (!push_table(r->L, k))
        return NULL;
    size_t len = lua_objlen(r->L, -1);
    char **out = calloc(len ? len : 1, sizeof(*out));
    if (!out)
        r->oom = 1;
    for (size_t i = 0; out && i < len; i++) {
        lua_rawgeti(r->L, -1, (int)i + 1);
        out[i] = dup_str(r, lua_tostring(r->L, -1));
        lua_pop(r->L, 1);
        if (!out[i])
            break;
        (*n)++;
        if (paths)
            file_path(r, &out[i]);
    }
    lua_pop(r->L, 1);
    return out;
}

static int get_tls_version(rctx_t *r)
{
    char *s = get_str(r, "min_version");
    int v = s && strcmp(s, "TLSv1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    free(s);
    return v;
}

/* A list of statuses into a set. */
static void get_statuses(lua_State *L, const char *k, lp_status_set_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!push_table(L, k))
        return;
    size_t n = lua_objlen(L, -1);
    for (size_t i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, (int)i);
        int s = (int)lua_tointeger(L, -1) - 100;
        out->bits[s / 64] |= 1ull << (s % 64);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* listen[i].tls, the table at the top of the stack. The single-certificate form goes first:
 * it is the default. */
static void read_tls_server(rctx_t *r, lp_tls_server_conf_t *tc)
{
    lua_State *L = r->L;
    char *cert = get_path(r, "cert"), *key = get_path(r, "key");
    size_t more = 0;
    if (push_table(L, "certificates")) {
        more = lua_objlen(L, -1);
        lua_pop(L, 1);
    }
    if (!(tc->certs = calloc((cert ? 1 : 0) + more + 1, sizeof(*tc->certs)))) {
        r->oom = 1;
        free(cert);
        free(key);
        return;
    }
    if (cert) {
        tc->certs[0] = (lp_tls_cert_conf_t){.cert = cert, .key = key};
        tc->ncerts = 1;
    } else {
        free(key);
    }
    if (more && push_table(L, "certificates")) {
        for (size_t i = 0; i < more; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            lp_tls_cert_conf_t *cc = &tc->certs[tc->ncerts++];
            cc->cert = get_path(r, "cert");
            cc->key = get_path(r, "key");
            cc->names = get_strings(r, "names", 0, &cc->nnames);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    tc->client_ca = get_path(r, "client_ca");
    char *verify = get_str(r, "verify_client");
    if (!tc->client_ca)
        tc->verify_client = LP_TLS_VERIFY_OFF;
    else if (verify && strcmp(verify, "optional") == 0)
        tc->verify_client = LP_TLS_VERIFY_OPTIONAL;
    else
        tc->verify_client = LP_TLS_VERIFY_REQUIRED;
    free(verify);
    tc->ciphers = get_str(r, "ciphers");
    tc->ciphersuites = get_str(r, "ciphersuites");
    tc->min_version = get_tls_version(r);
    tc->session_tickets = get_bool(L, "session_tickets");
    tc->session_cache = get_uint(L, "session_cache");
    tc->session_timeout_s = get_ms(L, "session_timeout") / 1000;
    if (!tc->session_timeout_s)
        tc->session_timeout_s = 1;
    tc->handshake_timeout = get_ms(L, "handshake_timeout");
    tc->ticket_key_files = get_strings(r, "session_ticket_keys", 1, &tc->nticket_key_files);
}

/* upstreams.NAME.tls, the table at the top of the stack. */
static void read_tls_client(rctx_t *r, lp_tls_client_conf_t *tc)
{
    tc->verify = get_bool(r->L, "verify");
    tc->ca = get_path(r, "ca");
    tc->sni = get_str(r, "sni");
    tc->cert = get_path(r, "cert");
    tc->key = get_path(r, "key");
    tc->ciphers = get_str(r, "ciphers");
    tc->min_version = get_tls_version(r);
}

/* A page file into p->body, whole: read once here, served from memory. */
static int read_page_file(rctx_t *r, const char *path, const char *file, lp_error_page_t *p)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(r, path, "cannot read \"%s\": %s", file, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) || !S_ISREG(st.st_mode))
        rc = fail(r, path, "\"%s\" is not a regular file", file);
    else if (st.st_size > LP_ERROR_PAGE_MAX)
        rc = fail(r, path, "\"%s\" is %lld bytes, above the limit of %d", file,
                  (long long)st.st_size, LP_ERROR_PAGE_MAX);
    else if (st.st_size && !(p->body = malloc((size_t)st.st_size)))
        r->oom = 1;
    size_t n = 0;
    while (!rc && p->body && n < (size_t)st.st_size) {
        ssize_t k = read(fd, p->body + n, (size_t)st.st_size - n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0) {
            rc = fail(r, path, "cannot read \"%s\": %s", file, k ? strerror(errno) : "truncated");
            break;
        }
        n += (size_t)k;
    }
    p->body_len = n;
    close(fd);
    return rc;
}

/* admin.token_file: the bearer token is the file's content without trailing white space.
 * Read when the config loads (a reload reads it again); kept in c->admin_token. */
static int read_admin_token(rctx_t *r, const char *file)
{
    int fd = open(file, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(r, "admin.token_file", "cannot read \"%s\": %s", file, strerror(errno));
    char buf[LP_ADMIN_TOKEN_MAX + 2];
    size_t n = 0;
    ssize_t k;
    while (n < sizeof(buf) &&
           ((k = read(fd, buf + n, sizeof(buf) - n)) > 0 || (k < 0 && errno == EINTR)))
        if (k > 0)
            n += (size_t)k;
    close(fd);
    while (n &&
           (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' ' || buf[n - 1] == '\t'))
        n--;
    if (n > LP_ADMIN_TOKEN_MAX)
        return fail(r, "admin.token_file", "\"%s\" holds more than %d bytes: a token is one line",
                    file, LP_ADMIN_TOKEN_MAX);
    if (n < LP_ADMIN_TOKEN_MIN)
        return fail(r, "admin.token_file",
                    "\"%s\" holds a token of %zu bytes: at least %d are needed (e.g. `openssl "
                    "rand -hex 32`)",
                    file, n, LP_ADMIN_TOKEN_MIN);
    for (size_t i = 0; i < n; i++)
        if (buf[i] <= 0x20 || buf[i] >= 0x7f)
            return fail(r, "admin.token_file",
                        "\"%s\": the token must be one line of visible ASCII characters", file);
    if (!(r->c->admin_token = malloc(n + 1))) {
        r->oom = 1;
        return 0;
    }
    memcpy(r->c->admin_token, buf, n);
    r->c->admin_token[n] = 0;
    return 0;
}

/* Whether a is a loopback address (127.0.0.0/8, ::1, ::ffff:127.0.0.0/104). */
static int is_loopback(const lp_addr_t *a)
{
    if (a->addr.ss_family == AF_INET)
        return (ntohl(((const struct sockaddr_in *)&a->addr)->sin_addr.s_addr) >> 24) == 127;
    if (a->addr.ss_family != AF_INET6)
        return 0;
    const struct in6_addr *in6 = &((const struct sockaddr_in6 *)&a->addr)->sin6_addr;
    if (IN6_IS_ADDR_LOOPBACK(in6))
        return 1;
    return IN6_IS_ADDR_V4MAPPED(in6) && in6->s6_addr[12] == 127;
}

/* Field "error_pages" of the table at the top of the stack (keys were checked: statuses
 * 400..599). `at` is its key path for errors ("routes[2].error_pages"). */
static int read_error_pages(rctx_t *r, const char *at, lp_error_pages_t *out)
{
    lua_State *L = r->L;
    if (!push_table(L, "error_pages"))
        return 0;
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        n++;
    }
    if (n && !(out->pages = calloc(n, sizeof(*out->pages))))
        r->oom = 1;
    int rc = 0;
    lua_pushnil(L);
    while (out->pages && !rc && lua_next(L, -2)) {
        lp_error_page_t *p = &out->pages[out->npages++];
        p->status = (int)lua_tointeger(L, -2);
        p->send_status = get_uint(L, "status");
        if (!p->send_status)
            p->send_status = p->status;
        p->builtin = get_bool(L, "builtin");
        if (!p->builtin) {
            p->content_type = get_str(r, "content_type");
            char *file = get_path(r, "file");
            if (file) {
                char kp[512];
                snprintf(kp, sizeof(kp), "%s.%d.file", at, p->status);
                rc = read_page_file(r, kp, file, p);
                free(file);
            } else {
                lua_getfield(L, -1, "body");
                size_t len;
                const char *b = lua_tolstring(L, -1, &len);
                if (b && len && (p->body = malloc(len))) {
                    memcpy(p->body, b, len);
                    p->body_len = len;
                } else if (b && len) {
                    r->oom = 1;
                }
                lua_pop(L, 1);
            }
            p->has_vars = p->body && memchr(p->body, '$', p->body_len) != NULL;
        }
        lua_pop(L, 1);
    }
    lua_pop(L, rc ? 2 : 1); /* after an error the key is still there */
    return rc;
}

static void free_error_pages(lp_error_pages_t *e)
{
    for (size_t i = 0; i < e->npages; i++) {
        free(e->pages[i].content_type);
        free(e->pages[i].body);
    }
    free(e->pages);
}

/* listen[i].real_ip, the table at the top of the stack (CIDRs checked by luaproxy.cidr). */
static void read_real_ip(rctx_t *r, lp_listen_conf_t *lc)
{
    lua_State *L = r->L;
    lc->realip_header = get_str(r, "header");
    if (lc->realip_header && strcasecmp(lc->realip_header, "Forwarded") == 0)
        lc->realip_kind = LP_REALIP_FORWARDED;
    if (!push_table(L, "trusted"))
        return;
    size_t n = lua_objlen(L, -1);
    lc->trusted = calloc(n ? n : 1, sizeof(*lc->trusted));
    if (!lc->trusted) {
        r->oom = 1;
        n = 0;
    }
    for (size_t k = 0; k < n; k++) {
        lua_rawgeti(L, -1, (int)k + 1);
        size_t len;
        const char *s = lua_tolstring(L, -1, &len);
        if (s && lp_cidr_parse(s, len, &lc->trusted[lc->ntrusted]) == 0)
            lc->ntrusted++;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static void read_listen(rctx_t *r)
{
    lua_State *L = r->L;
    lp_config_t *c = r->c;
    push_table(L, "listen");
    size_t n = lua_objlen(L, -1);
    c->listen = calloc(n ? n : 1, sizeof(*c->listen));
    r->server_tls = r->c->todo->server_tls = calloc(n ? n : 1, sizeof(*r->server_tls));
    if (!c->listen || !r->server_tls)
        r->oom = 1;
    for (size_t i = 0; !r->oom && i < n; i++) {
        lp_listen_conf_t *lc = &c->listen[c->nlisten++];
        lua_rawgeti(L, -1, (int)i + 1);
        lc->addr.text = get_str(r, "address"); /* resolved in step 3 */
        lc->backlog = (int)get_num(L, "backlog");
        if (push_table(L, "tls")) {
            read_tls_server(r, &r->server_tls[i]);
            lua_pop(L, 1);
        }
        lc->proxy_protocol = get_bool(L, "proxy_protocol");
        lc->http2 = get_bool(L, "http2");
        r->server_tls[i].alpn_h2 = lc->http2;
        if (push_table(L, "real_ip")) {
            read_real_ip(r, lc);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* A target, the table at the top of the stack: "host:port" (http:// and https:// URLs were
 * turned into that by the schema). The address is resolved in step 3. */
static void read_target(rctx_t *r, lp_target_conf_t *t)
{
    t->weight = get_uint(r->L, "weight");
    t->addr.text = get_str(r, "address");
    t->https = get_bool(r->L, "https");
}

static void read_health(rctx_t *r, lp_health_conf_t *hc)
{
    lua_State *L = r->L;
    push_table(L, "health");
    if ((hc->active = push_table(L, "active"))) {
        char *type = get_str(r, "type");
        hc->active_http = type && strcmp(type, "http") == 0;
        free(type);
        hc->path = get_str(r, "path");
        hc->interval = get_ms(L, "interval");
        hc->timeout = get_ms(L, "timeout");
        hc->healthy = get_uint(L, "healthy");
        hc->unhealthy = get_uint(L, "unhealthy");
        get_statuses(L, "statuses", &hc->active_statuses);
        lua_pop(L, 1);
    } else {
        hc->path = dup_str(r, "/");
    }
    push_table(L, "passive");
    hc->passive_failures = get_uint(L, "failures");
    hc->ejection = get_ms(L, "ejection");
    get_statuses(L, "statuses", &hc->passive_statuses);
    lua_pop(L, 2);
}

static void read_hash_on(rctx_t *r, lp_upstream_conf_t *u)
{
    static const struct {
        const char *prefix;
        lp_hash_on_t on;
    } kinds[] = {{"path", LP_HASH_PATH},
                 {"header:", LP_HASH_HEADER},
                 {"cookie:", LP_HASH_COOKIE},
                 {"query:", LP_HASH_QUERY}};
    char *s = get_str(r, "hash_on");
    u->hash_on = LP_HASH_IP;
    for (size_t i = 0; s && i < LP_ARRAY_LEN(kinds); i++) {
        size_t n = strlen(kinds[i].prefix);
        if (strncmp(s, kinds[i].prefix, n) == 0) {
            u->hash_on = kinds[i].on;
            if (kinds[i].prefix[n - 1] == ':')
                u->hash_name = dup_str(r, s + n);
            break;
        }
    }
    free(s);
}

/* upstreams[i], the table at the top of the stack. */
static void read_upstream(rctx_t *r, size_t i)
{
    lua_State *L = r->L;
    lp_upstream_conf_t *u = &r->c->upstreams[i];
    push_table(L, "targets");
    size_t nt = lua_objlen(L, -1), https = 0;
    if (!(u->targets = calloc(nt ? nt : 1, sizeof(*u->targets))))
        r->oom = 1;
    for (size_t j = 0; u->targets && j < nt; j++) {
        lua_rawgeti(L, -1, (int)j + 1);
        read_target(r, &u->targets[u->ntargets++]);
        https += (size_t)u->targets[j].https;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    u->balance = get_str(r, "balance");
    read_hash_on(r, u);
    read_health(r, &u->health);
    u->retries = get_uint(L, "retries");
    get_statuses(L, "retry_on", &u->retry_on);
    u->retry_budget = get_num(L, "retry_budget");
    u->max_connections = get_uint(L, "max_connections");
    u->max_pending = get_uint(L, "max_pending");
    u->pending_timeout = get_ms(L, "pending_timeout");
    u->total_timeout = get_ms(L, "total_timeout");
    u->dns_ttl = get_ms(L, "dns_ttl");
    u->keepalive = get_uint(L, "keepalive");
    u->keepalive_timeout = get_ms(L, "keepalive_timeout");
    u->keepalive_requests = get_uint(L, "keepalive_requests");
    char *proto = get_str(r, "protocol");
    u->h2 = proto && strcmp(proto, "h2") == 0;
    free(proto);
    u->max_streams = get_uint(L, "max_streams");
    lp_tls_client_conf_t *tc = &r->client_tls[i];
    if (push_table(L, "tls")) {
        read_tls_client(r, tc);
        r->client_tls_on[i] = 1;
        lua_pop(L, 1);
    } else if (https) {
        /* https:// targets: TLS with the defaults (the system CA store). */
        tc->verify = 1;
        tc->min_version = TLS1_2_VERSION;
        r->client_tls_on[i] = 1;
    }
    tc->alpn_h2 = u->h2;
}

static void read_upstreams(rctx_t *r)
{
    lua_State *L = r->L;
    lp_config_t *c = r->c;
    push_table(L, "upstreams");
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        n++;
    }
    c->upstreams = calloc(n ? n : 1, sizeof(*c->upstreams));
    r->client_tls = r->c->todo->client_tls = calloc(n ? n : 1, sizeof(*r->client_tls));
    r->client_tls_on = r->c->todo->client_tls_on = calloc(n ? n : 1, 1);
    if (!c->upstreams || !r->client_tls || !r->client_tls_on) {
        r->oom = 1;
        lua_pop(L, 1);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        size_t i = c->nupstreams++;
        c->upstreams[i].name = dup_str(r, lua_tostring(L, -2));
        read_upstream(r, i);
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int find_upstream(const lp_config_t *c, const char *name, size_t *idx)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        if (c->upstreams[i].name && strcmp(c->upstreams[i].name, name) == 0) {
            *idx = i;
            return 0;
        }
    return -1;
}

/* An overlay that does not load or apply fails the load, except for explain's look at a
 * config (LP_OVERLAY_REPORT), which gets the config's own routes and the reason. */
static int overlay_failed(rctx_t *r, const char *key, const char *err)
{
    if (lp_config_overlay != LP_OVERLAY_REPORT)
        return fail(r, key, "%s", err);
    free(r->c->overlay_error);
    if (!(r->c->overlay_error = strdup(err)))
        r->oom = 1;
    return 0;
}

/* The route table: the routes, then the changes the admin API made (the overlay file next
 * to the config, rtable.h). Warns about routes that can never match. */
static int read_overlay(rctx_t *r)
{
    lp_config_t *c = r->c;
    char err[1536]; /* the overlay's refusal names its file twice */
    json_t *ops = NULL;
    if (!(c->rtable = lp_rtable_from_config(c))) {
        r->oom = 1;
        return 0;
    }
    lp_rtable_fingerprint(c, c->routes_fp);
    if (c->path && lp_config_overlay != LP_OVERLAY_SKIP &&
        lp_rtable_overlay(c->path, c, &ops, err, sizeof(err)))
        return overlay_failed(r, "routes (overlay)", err);
    if (ops) {
        lp_rtable_t *t = lp_rtable_apply(c->rtable, c, ops, NULL, err, sizeof(err));
        json_decref(ops);
        if (!t)
            return overlay_failed(r, "routes (admin overlay " LP_ROUTES_OVERLAY_SUFFIX ")", err);
        lp_rtable_unref(c->rtable);
        c->rtable = t;
        lp_log_notice("%s: routes: admin overlay applied (%zu routes)", c->path, t->nroutes);
    }
    lp_route_warn_shadows(c); /* -t, start and every reload say it */
    return 0;
}

static int read_routes(rctx_t *r)
{
    lua_State *L = r->L;
    lp_config_t *c = r->c;
    int rc = 0;
    push_table(L, "routes");
    size_t n = lua_objlen(L, -1);
    if (!(c->routes = calloc(n ? n : 1, sizeof(*c->routes))))
        r->oom = 1;
    /* The routes' conditions go into the compiled router (route.h), in order. */
    lp_rbuild_t *b = lp_rbuild_new();
    if (!b)
        r->oom = 1;
    for (size_t i = 0; b && c->routes && i < n && !rc; i++) {
        lp_route_conf_t *rt = &c->routes[c->nroutes++];
        lua_rawgeti(L, -1, (int)i + 1);
        if (!(rt->name = get_str(r, "name"))) {
            char nm[32];
            snprintf(nm, sizeof(nm), "route#%zu", i + 1);
            rt->name = dup_str(r, nm);
        }
        push_table(L, "match");
        rt->host = get_str(r, "host");
        rt->prefix = get_str(r, "prefix");
        /* A route without path conditions has the prefix "/" (as before paths and regexes). */
        lua_getfield(L, -1, "path");
        lua_getfield(L, -2, "regex");
        if (!rt->prefix && lua_isnil(L, -1) && lua_isnil(L, -2))
            rt->prefix = dup_str(r, "/");
        lua_pop(L, 2);
        char berr[256];
        if (lp_rbuild_route(b) < 0)
            r->oom = 1;
        else if (lp_route_read_match(L, b, berr, sizeof(berr))) {
            char p[64];
            snprintf(p, sizeof(p), "routes[%zu].match", i + 1);
            rc = fail(r, p, "%s", berr);
        }
        /* A Lua predicate runs in the worker's VM (conn.c, route_predicate.lua). */
        lua_getfield(L, -1, "predicate");
        if (lua_isfunction(L, -1))
            c->has_lua = 1;
        lua_pop(L, 2);
        for (char *h = rt->host; h && *h; h++)
            *h = (char)tolower((unsigned char)*h);
        rt->prefix_len = rt->prefix ? strlen(rt->prefix) : 0;
        rt->strip_prefix = get_bool(L, "strip_prefix");
        /* With plugins (here or global) or a handler, Lua may choose the upstream. */
        lua_getfield(L, -1, "plugins");
        lua_getfield(L, -2, "handler");
        if (!lua_isnil(L, -1) || !lua_isnil(L, -2) || c->global_plugins)
            c->has_lua = 1;
        rt->lua_parts =
            (lua_isnil(L, -2) ? 0 : LP_ROUTE_PLUGINS) | (lua_isnil(L, -1) ? 0 : LP_ROUTE_HANDLER);
        lua_pop(L, 2);
        char *up = get_str(r, "upstream");
        rt->has_upstream = up != NULL;
        if (up && find_upstream(c, up, &rt->upstream)) {
            char p[64];
            snprintf(p, sizeof(p), "routes[%zu].upstream", i + 1);
            rc = fail(r, p, "no upstream named \"%s\"", up);
        }
        free(up);
        if (!rc) {
            char p[64];
            snprintf(p, sizeof(p), "routes[%zu].error_pages", i + 1);
            rc = read_error_pages(r, p, &rt->error_pages);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (b && !rc && !r->oom) {
        char berr[256];
        if (!(c->router = lp_rbuild_finish(b, berr, sizeof(berr))))
            rc = fail(r, "routes", "%s", berr);
        else
            rc = read_overlay(r);
    } else
        lp_rbuild_free(b);
    return rc;
}

static int field_cmp(const void *a, const void *b)
{
    return strcmp(((const lp_log_field_t *)a)->name, ((const lp_log_field_t *)b)->name);
}

/* log.json (a map of member names to templates, validated) into members sorted by name:
 * a Lua table has no order of its own, and a fixed one keeps lines comparable. */
static void read_log_json(rctx_t *r, lp_log_format_t *f)
{
    lua_State *L = r->L;
    if (!push_table(L, "json"))
        return;
    size_t n = 0;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        n++;
    }
    if (!(f->json = calloc(n ? n : 1, sizeof(*f->json)))) {
        r->oom = 1;
        lua_pop(L, 1);
        return;
    }
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lp_log_field_t *m = &f->json[f->njson++];
        m->name = dup_str(r, lua_tostring(L, -2));
        m->value = dup_str(r, lua_tostring(L, -1));
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
    if (!r->oom)
        qsort(f->json, f->njson, sizeof(*f->json), field_cmp);
}

static int syslog_code(const char *name, int fallback)
{
    static const struct {
        const char *name;
        int code;
    } codes[] = {
        {"kern", 0},      {"user", 1},    {"mail", 2},    {"daemon", 3},  {"auth", 4},
        {"syslog", 5},    {"lpr", 6},     {"news", 7},    {"uucp", 8},    {"cron", 9},
        {"authpriv", 10}, {"ftp", 11},    {"local0", 16}, {"local1", 17}, {"local2", 18},
        {"local3", 19},   {"local4", 20}, {"local5", 21}, {"local6", 22}, {"local7", 23},
    };
    static const char *const sev[] = {"emerg",   "alert",  "crit", "err",
                                      "warning", "notice", "info", "debug"};
    if (!name)
        return fallback;
    for (size_t i = 0; i < LP_ARRAY_LEN(codes); i++)
        if (strcmp(codes[i].name, name) == 0)
            return codes[i].code;
    for (int i = 0; i < 8; i++)
        if (strcmp(sev[i], name) == 0)
            return i;
    if (strcmp(name, "error") == 0)
        return 3;
    if (strcmp(name, "warn") == 0)
        return 4;
    return fallback;
}

/* log.access or log.error (validated): a path, a standard stream, or a syslog table. */
static void read_log_output(rctx_t *r, const char *key, lp_log_output_t *o)
{
    lua_State *L = r->L;
    memset(o, 0, sizeof(*o));
    o->facility = 23; /* local7, as nginx */
    o->severity = 6;  /* info */
    lua_getfield(L, -1, key);
    if (lua_type(L, -1) == LUA_TSTRING) {
        const char *v = lua_tostring(L, -1);
        if (strcmp(v, "-") == 0 || strcmp(v, "stdout") == 0)
            o->kind = LP_LOGOUT_STDOUT;
        else if (strcmp(v, "stderr") == 0)
            o->kind = LP_LOGOUT_STDERR;
        else
            o->target = dup_str(r, v);
    } else if (lua_type(L, -1) == LUA_TTABLE) {
        char *s = get_str(r, "syslog");
        o->kind = s && s[0] == '/' ? LP_LOGOUT_SYSLOG_UNIX : LP_LOGOUT_SYSLOG_UDP;
        o->target = s;
        char *f = get_str(r, "facility"), *v = get_str(r, "severity");
        o->facility = syslog_code(f, o->facility);
        o->severity = syslog_code(v, o->severity);
        free(f);
        free(v);
        o->app_name = get_str(r, "app_name");
        o->hostname = get_str(r, "hostname");
    }
    lua_pop(L, 1);
}

static void free_log_output(lp_log_output_t *o)
{
    free(o->target);
    free(o->app_name);
    free(o->hostname);
}

/* The sampling, writer and error log keys of log (on the stack). */
static void read_log_extra(rctx_t *r)
{
    lua_State *L = r->L;
    lp_config_t *c = r->c;
    read_log_output(r, "access", &c->access_out);
    read_log_output(r, "error", &c->error_out);
    char *ef = get_str(r, "error_format");
    c->error_json = ef && strcmp(ef, "json") == 0;
    free(ef);
    double sample = get_num(L, "sample");
    c->log_sample = sample >= 1.0 ? UINT32_MAX : (uint32_t)(sample * 4294967296.0);
    c->log_always_status = (int)get_num(L, "always_status");
    c->log_always_slower_ms = get_ms(L, "always_slower");
    c->log_flush_ms = get_ms(L, "flush");
    c->log_buffer = (size_t)get_num(L, "buffer");
    c->log_max_fields = get_uint(L, "max_fields");
}

static void read_log(rctx_t *r)
{
    lua_State *L = r->L;
    lp_config_t *c = r->c;
    push_table(L, "log");
    lua_getfield(L, -1, "access");
    c->access_log = lua_type(L, -1) == LUA_TSTRING  ? dup_str(r, lua_tostring(L, -1))
                    : lua_type(L, -1) == LUA_TTABLE ? dup_str(r, "syslog")
                                                    : NULL;
    lua_pop(L, 1);
    if (!(c->access_format.text = get_str(r, "format")))
        c->access_format.text = dup_str(r, LP_ACCESS_FORMAT_DEFAULT);
    read_log_json(r, &c->access_format);
    read_log_extra(r);
    char *level = get_str(r, "level");
    c->log_level = LP_LOG_INFO;
    if (level)
        lp_log_level_parse(level, &c->log_level);
    free(level);
    lua_pop(L, 1);
}

/* `tracing` (the endpoint's syntax was checked by the schema; resolved in step 3). */
static void read_tracing(rctx_t *r)
{
    lua_State *L = r->L;
    lp_trace_conf_t *t = &r->c->tracing;
    if (!push_table(L, "tracing"))
        return;
    t->enabled = get_bool(L, "enabled");
    t->accept = get_bool(L, "accept");
    t->sample = get_num(L, "sample");
    if (push_table(L, "export")) {
        char *url = get_str(r, "endpoint");
        const char *hp = url ? url + 7 : ""; /* after "http://" */
        const char *slash = strchr(hp, '/');
        size_t hl = slash ? (size_t)(slash - hp) : strlen(hp);
        t->collector_host = strndup(hp, hl);
        t->collector_path = dup_str(r, slash ? slash : "/v1/traces");
        /* The address to resolve: the Host value, with port 80 when it names none. */
        if (t->collector_host) {
            size_t n = strlen(t->collector_host);
            int port = n && t->collector_host[n - 1] != ']' && strrchr(t->collector_host, ':');
            if ((t->collector.text = malloc(n + 4)))
                snprintf(t->collector.text, n + 4, "%s%s", t->collector_host, port ? "" : ":80");
        }
        if (!t->collector_host || !t->collector.text)
            r->oom = 1;
        free(url);
        t->service_name = get_str(r, "service_name");
        t->batch_size = get_uint(L, "batch_size");
        t->max_queue = get_uint(L, "max_queue");
        t->interval = get_ms(L, "interval");
        t->timeout = get_ms(L, "timeout");
        t->export_on = 1;
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

static int name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* shared = { name = bytes }: a registry reference per dict (made now, empty, when new; an
 * existing dict keeps its size and content until this config becomes current). */
static void read_shared(rctx_t *r)
{
    lua_State *L = r->L;
    lp_config_t *c = r->c;
    if (!push_table(L, "shared"))
        return;
    size_t n = 0;
    for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1))
        n++;
    char **names = calloc(n + 1, sizeof(*names));
    size_t *sizes = calloc(n + 1, sizeof(*sizes));
    c->shdicts = calloc(n + 1, sizeof(*c->shdicts));
    c->shdict_sizes = calloc(n + 1, sizeof(*c->shdict_sizes));
    size_t i = 0;
    for (lua_pushnil(L); names && lua_next(L, -2); lua_pop(L, 1))
        if (i < n && (names[i] = dup_str(r, lua_tostring(L, -2))))
            sizes[i++] = (size_t)lua_tonumber(L, -1);
    lua_pop(L, 1);
    if (!names || !sizes || !c->shdicts || !c->shdict_sizes) {
        r->oom = 1;
        i = 0;
    }
    /* Sorted, so that GET /status lists them in a stable order. */
    for (size_t j = 0; j < i; j++)
        for (size_t k = j + 1; k < i; k++)
            if (name_cmp(&names[k], &names[j]) < 0) {
                char *t = names[j];
                names[j] = names[k];
                names[k] = t;
                size_t z = sizes[j];
                sizes[j] = sizes[k];
                sizes[k] = z;
            }
    for (size_t j = 0; j < i; j++) {
        if (!(c->shdicts[c->nshdicts] = lp_shdict_acquire(names[j], sizes[j]))) {
            r->oom = 1;
            break;
        }
        c->shdict_sizes[c->nshdicts++] = sizes[j];
    }
    for (size_t j = 0; j < i; j++)
        free(names[j]);
    free(names);
    free(sizes);
}

void lp_config_apply_shared(const lp_config_t *c)
{
    for (size_t i = 0; i < c->nshdicts; i++)
        if (lp_shdict_capacity(c->shdicts[i]) != c->shdict_sizes[i])
            lp_shdict_resize(c->shdicts[i], c->shdict_sizes[i]);
    for (size_t i = 0; i < c->ncache_zones; i++)
        lp_cache_zone_resize(c->cache_zones[i], c->cache_memory[i], c->cache_max_object[i]);
    for (size_t i = 0; i < c->ncache_zones; i++)
        if (c->cache_disk_size[i])
            lp_cache_zone_resize_disk(c->cache_zones[i], c->cache_disk_size[i]);
}

/* cache.zones.NAME.disk = { path, size } (on the stack): the zone's disk tier, started now
 * when new (its files are indexed in the background); a relative path is the config's
 * directory's. A thread that cannot start is logged: the zone stays in memory. */
static void read_cache_disk(rctx_t *r, lp_cache_zone_t *z, size_t *size)
{
    char *path = get_str(r, "path");
    *size = (size_t)get_num(r->L, "size");
    if (!path)
        return;
    const char *slash = strrchr(r->file, '/');
    if (path[0] != '/' && slash) {
        size_t dlen = (size_t)(slash - r->file), n = dlen + 1 + strlen(path) + 1;
        char *full = malloc(n);
        if (!full) {
            free(path);
            r->oom = 1;
            return;
        }
        snprintf(full, n, "%.*s/%s", (int)dlen, r->file, path);
        free(path);
        path = full;
    }
    if (lp_cache_zone_set_disk(z, path, *size))
        lp_log(LP_LOG_ERROR, "cache zone %s: its disk thread cannot start: memory only",
               lp_cache_zone_name(z));
    free(path);
}

/* cache.zones = { name = { memory, max_object_size } }: a registry reference per zone (made
 * now, empty, when new; an existing zone keeps its entries and its limits until this config
 * becomes current), so a reload keeps what the zones hold. */
static void read_cache(rctx_t *r)
{
    lua_State *L = r->L;
    lp_config_t *c = r->c;
    if (!push_table(L, "cache"))
        return;
    if (!push_table(L, "zones")) {
        lua_pop(L, 1);
        return;
    }
    size_t n = 0;
    for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1))
        n++;
    c->cache_zones = calloc(n + 1, sizeof(*c->cache_zones));
    c->cache_memory = calloc(n + 1, sizeof(*c->cache_memory));
    c->cache_max_object = calloc(n + 1, sizeof(*c->cache_max_object));
    c->cache_disk_size = calloc(n + 1, sizeof(*c->cache_disk_size));
    if (!c->cache_zones || !c->cache_memory || !c->cache_max_object || !c->cache_disk_size) {
        r->oom = 1;
        lua_pop(L, 2);
        return;
    }
    for (lua_pushnil(L); lua_next(L, -2); lua_pop(L, 1)) {
        if (c->ncache_zones >= n)
            continue;
        size_t mem = (size_t)get_num(L, "memory");
        size_t maxobj = (size_t)get_num(L, "max_object_size");
        lp_cache_zone_t *z = lp_cache_zone_acquire(lua_tostring(L, -2), mem, maxobj);
        if (!z) {
            r->oom = 1;
            continue;
        }
        c->cache_zones[c->ncache_zones] = z;
        if (lp_config_cache_disk && push_table(L, "disk")) {
            read_cache_disk(r, z, &c->cache_disk_size[c->ncache_zones]);
            lua_pop(L, 1);
        }
        c->cache_memory[c->ncache_zones] = mem;
        c->cache_max_object[c->ncache_zones++] = maxobj;
    }
    lua_pop(L, 2);
}

/* metrics: the schema checked the bounds (increasing, at most LP_M_MAX_BUCKETS). */
static void read_metrics(rctx_t *r)
{
    lua_State *L = r->L;
    lp_metrics_conf_t *m = &r->c->metrics;
    if (!push_table(L, "metrics"))
        return;
    m->enabled = get_bool(L, "enabled");
    m->max_series = get_uint(L, "max_series");
    if (push_table(L, "buckets")) {
        size_t n = lua_objlen(L, -1);
        if (n && !(m->buckets = calloc(n, sizeof(double))))
            r->oom = 1;
        for (size_t i = 0; m->buckets && i < n; i++) {
            lua_rawgeti(L, -1, (int)i + 1);
            m->buckets[m->nbuckets++] = lua_tonumber(L, -1);
            lua_pop(L, 1);
        }
        lua_pop(L, 1);
    }
    lua_pop(L, 1);
}

/* The validated table is at the top of the stack. */
static int read_config(rctx_t *r)
{
    lua_State *L = r->L;
    lp_config_t *c = r->c;
    c->workers = get_uint(L, "workers");
    if (!c->workers) {
        unsigned cpus = uv_available_parallelism();
        c->workers = cpus ? cpus : 1;
    }
    if (push_table(L, "plugins")) {
        c->has_lua = c->global_plugins = lua_objlen(L, -1) > 0;
        lua_pop(L, 1);
    }
    read_listen(r);
    read_upstreams(r);
    int rc = read_routes(r);
    if (!rc)
        rc = read_error_pages(r, "error_pages", &c->error_pages);
    push_table(L, "timeouts");
    lp_timeouts_t *t = &c->timeouts;
    t->connect = get_ms(L, "connect");
    t->read = get_ms(L, "read");
    t->send = get_ms(L, "send");
    t->client_header = get_ms(L, "client_header");
    t->client_body = get_ms(L, "client_body");
    t->keepalive = get_ms(L, "keepalive");
    t->drain = get_ms(L, "drain");
    t->tunnel = get_ms(L, "tunnel");
    lua_pop(L, 1);
    push_table(L, "limits");
    c->limits.max_header_size = (size_t)get_num(L, "max_header_size");
    c->limits.max_uri_size = (size_t)get_num(L, "max_uri_size");
    c->limits.max_body_size = (uint64_t)get_num(L, "max_body_size");
    c->limits.max_headers = get_uint(L, "max_headers");
    c->limits.max_connections = get_uint(L, "max_connections");
    lua_pop(L, 1);
    c->limits.path_norm = (get_bool(L, "normalize_path") ? LP_PATHN_NORMALIZE : 0) |
                          (get_bool(L, "merge_slashes") ? LP_PATHN_MERGE : 0);
    push_table(L, "http2");
    c->h2.max_concurrent_streams = get_uint(L, "max_concurrent_streams");
    c->h2.initial_window_size = get_uint(L, "initial_window_size");
    c->h2.max_header_list_size = get_uint(L, "max_header_list_size");
    c->h2.hpack_table_size = get_uint(L, "hpack_table_size");
    c->h2.max_resets = get_uint(L, "max_resets");
    c->h2.max_control_frames = get_uint(L, "max_control_frames");
    c->h2.max_continuations = get_uint(L, "max_continuations");
    c->h2.idle_timeout = get_ms(L, "idle_timeout");
    c->h2.max_requests = (uint32_t)get_num(L, "max_requests");
    lua_pop(L, 1);
    read_log(r);
    push_table(L, "lua");
    c->lua_phase_timeout = get_ms(L, "phase_timeout");
    c->lua_max_timers = get_uint(L, "max_timers");
    c->lua_init_timeout = get_ms(L, "init_timeout");
    c->lua_max_running_timers = get_uint(L, "max_running_timers");
    lua_pop(L, 1);
    if (push_table(L, "admin")) {
        c->admin.text = get_str(r, "address"); /* resolved in step 3 */
        char *token_file = get_path(r, "token_file");
        if (token_file && !rc)
            rc = read_admin_token(r, token_file);
        free(token_file);
        lua_pop(L, 1);
    }
    if (push_table(L, "config_source")) {
        c->config_source = encode_json(r);
        lua_pop(L, 1);
    }
    c->pid_file = get_str(r, "pid_file");
    c->watch = get_bool(L, "watch");
    lua_getfield(L, -1, "client_abort");
    c->client_abort_close = lua_type(L, -1) == LUA_TSTRING && !strcmp(lua_tostring(L, -1), "close");
    lua_pop(L, 1);
    read_tracing(r);
    read_shared(r);
    read_cache(r);
    read_metrics(r);
    if (!rc && r->oom)
        rc = fail(r, "(top)", "out of memory");
    return rc;
}

/* ---- step 3: addresses and TLS contexts ---- */

/* *a's text resolved in place ("host:port", the host a name or an address). */
static int resolve_addr(rctx_t *r, const char *path, lp_addr_t *a)
{
    char *text = a->text, msg[300];
    int rc = lp_addr_parse(text, a, msg, sizeof(msg));
    if (rc) {
        a->text = text;
        return fail(r, path, "%s", msg);
    }
    free(text);
    return 0;
}

/* A target's address: an IP address as is; a name becomes a DNS target, resolved now and
 * again every dns_ttl by each worker. A name that does not resolve is not an error: it has
 * no address until it does. */
static int resolve_target(rctx_t *r, const char *path, lp_target_conf_t *t)
{
    char host[256], msg[300];
    if (lp_addr_split(t->addr.text, host, sizeof(host), &t->port, msg, sizeof(msg)))
        return fail(r, path, "%s", msg);
    if (!host[0] || lp_addr_is_ip(host))
        return resolve_addr(r, path, &t->addr);
    if (!(t->host = strdup(host)) ||
        !(t->resolved = calloc(LP_DNS_MAX_ADDRS, sizeof(*t->resolved))))
        return fail(r, path, "out of memory");
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc || !res) {
        lp_log_warn("%s: %s: cannot resolve \"%s\" (%s): no address until it does", r->file, path,
                    host, gai_strerror(rc));
        return 0;
    }
    t->nresolved = lp_addr_from_ai(res, t->port, t->resolved, LP_DNS_MAX_ADDRS);
    freeaddrinfo(res);
    return 0;
}

/* The TLS settings step 3 no longer needs (or never ran for). */
static void todo_free(lp_config_t *c)
{
    struct lp_config_todo_s *t = c->todo;
    if (!t)
        return;
    for (size_t i = 0; t->server_tls && i < c->nlisten; i++)
        lp_tls_server_conf_free(&t->server_tls[i]);
    for (size_t i = 0; t->client_tls && i < c->nupstreams; i++)
        lp_tls_client_conf_free(&t->client_tls[i]);
    free(t->server_tls);
    free(t->client_tls);
    free(t->client_tls_on);
    free(t);
    c->todo = NULL;
}

static int resolve(rctx_t *r)
{
    lp_config_t *c = r->c;
    char p[512], msg[512];
    int rc = 0;
    for (size_t i = 0; !rc && i < c->nlisten; i++) {
        snprintf(p, sizeof(p), "listen[%zu].address", i + 1);
        rc = resolve_addr(r, p, &c->listen[i].addr);
        snprintf(p, sizeof(p), "listen[%zu].tls", i + 1);
        if (!rc && r->server_tls[i].ncerts &&
            !(c->listen[i].tls = lp_tls_server_new(&r->server_tls[i], msg, sizeof(msg))))
            rc = fail(r, p, "%s", msg);
    }
    if (!rc && c->admin.text)
        rc = resolve_addr(r, "admin.address", &c->admin);
    if (!rc && c->tracing.export_on)
        rc = resolve_addr(r, "tracing.export.endpoint", &c->tracing.collector);
    /* Never public by default: an admin API that the network can reach needs a token. */
    if (!rc && c->admin.text && !c->admin_token && !is_loopback(&c->admin))
        rc = fail(r, "admin.address",
                  "%s is not a loopback address: the admin API would be open to the network "
                  "without authentication; set admin.token_file (a bearer token every request "
                  "must carry, docs/admin-api.md) or listen on 127.0.0.1 / [::1]",
                  c->admin.text);
    for (size_t i = 0; !rc && i < c->nupstreams; i++) {
        lp_upstream_conf_t *u = &c->upstreams[i];
        for (size_t j = 0; !rc && j < u->ntargets; j++) {
            snprintf(p, sizeof(p), "upstreams.%s.targets[%zu]", u->name, j + 1);
            rc = resolve_target(r, p, &u->targets[j]);
        }
        snprintf(p, sizeof(p), "upstreams.%s.tls", u->name);
        if (!rc && r->client_tls_on[i] &&
            !(u->tls = lp_tls_client_new(&r->client_tls[i], msg, sizeof(msg))))
            rc = fail(r, p, "%s", msg);
    }
    return rc;
}

/* ---- loading ---- */

/* Calls require(module)[fn](path?, value at `arg`) and leaves its result on the stack. A nil
 * result with a message, or an error, fails with "file: message". */
static int call_lua(lua_State *L, const char *file, const char *module, const char *fn,
                    int with_path, int arg, char *err, size_t errlen)
{
    lua_getglobal(L, "require");
    lua_pushstring(L, module);
    int rc = lua_pcall(L, 1, 1, 0);
    if (!rc) {
        lua_getfield(L, -1, fn);
        lua_remove(L, -2);
        if (with_path)
            lua_pushstring(L, file);
        lua_pushvalue(L, arg);
        rc = lua_pcall(L, with_path ? 2 : 1, 2, 0);
        if (!rc && lua_isnil(L, -2))
            rc = 1;
        else if (!rc)
            lua_pop(L, 1);
    }
    if (rc) {
        snprintf(err, errlen, "%s: %s", file, lua_tostring(L, -1));
        return LP_ECONFIG;
    }
    return 0;
}

/* The validated table at the top of the stack, encoded for the workers' VMs: they use this
 * evaluation rather than their own. What cannot move (a userdata in an upvalue...) leaves
 * c->lua_config NULL, and each VM evaluates the file itself as before. */
static int encode_for_workers(lua_State *L, lp_config_t *c)
{
    int top = lua_gettop(L), rc = 0;
    const char *why = "no luaproxy.transfer";
    lua_getglobal(L, "require");
    lua_pushliteral(L, "luaproxy.transfer");
    if (lua_pcall(L, 1, 1, 0) == 0) {
        lua_getfield(L, -1, "encode");
        lua_pushvalue(L, top);
        if (lua_pcall(L, 1, 2, 0) == 0 && lua_type(L, -2) == LUA_TSTRING) {
            size_t n;
            const char *s = lua_tolstring(L, -2, &n);
            if ((c->lua_config = malloc(n ? n : 1))) {
                memcpy(c->lua_config, s, n);
                c->lua_config_len = n;
            } else {
                rc = LP_ENOMEM;
            }
            why = NULL;
        } else {
            why = lua_tostring(L, -1);
        }
    }
    if (why)
        lp_log_notice("%s: each worker evaluates the file again: %s", c->path, why);
    lua_settop(L, top);
    return rc;
}

/* Where an error's key path points (lua/luaproxy/config_line.lua: locate): an etcd
 * document's key names the etcd key, not the bootstrap file; a key the file writes gets its
 * line ("FILE:LINE: routes[2].timeout: ..."). */
static void relocate_error(lua_State *L, const char *path, char *err, size_t errlen)
{
    int top = lua_gettop(L);
    lua_getglobal(L, "require");
    lua_pushstring(L, "luaproxy.config_line");
    if (lua_pcall(L, 1, 1, 0) == 0 && lua_istable(L, -1)) {
        lua_getfield(L, -1, "locate");
        lua_pushstring(L, path);
        lua_pushstring(L, err);
        if (lua_pcall(L, 2, 1, 0) == 0 && lua_isstring(L, -1))
            snprintf(err, errlen, "%s", lua_tostring(L, -1));
    }
    lua_settop(L, top);
}

/* config_source.lua's record of the merged document into c (source_name, source_keys). */
static int keep_source(lua_State *L, lp_config_t *c)
{
    int top = lua_gettop(L), rc = 0;
    lua_getglobal(L, "package");
    lua_getfield(L, -1, "loaded");
    lua_getfield(L, -1, "luaproxy.config_source");
    if (lua_istable(L, -1)) {
        lua_getfield(L, -1, "merged");
        if (lua_istable(L, -1)) {
            lua_getfield(L, -1, "name");
            c->source_name = lua_isstring(L, -1) ? strdup(lua_tostring(L, -1)) : NULL;
            lua_pop(L, 1);
            luaL_Buffer b;
            luaL_buffinit(L, &b);
            luaL_addchar(&b, ',');
            lua_getfield(L, -1, "keys");
            if (lua_istable(L, -1)) {
                lua_pushnil(L);
                while (lua_next(L, -2)) {
                    lua_pop(L, 1);
                    if (lua_type(L, -1) == LUA_TSTRING) {
                        lua_pushvalue(L, -1);
                        luaL_addvalue(&b); /* the key, then the separator */
                        luaL_addchar(&b, ',');
                    }
                }
            }
            lua_pop(L, 1);
            luaL_pushresult(&b);
            c->source_keys = strdup(lua_tostring(L, -1));
            rc = c->source_name && c->source_keys ? 0 : LP_ENOMEM;
        }
    }
    lua_settop(L, top);
    return rc;
}

void lp_config_relocate(const char *path, const char *name, const char *keys, char *err,
                        size_t errlen)
{
    size_t pl = strlen(path);
    if (!name || !keys || strncmp(err, path, pl) || strncmp(err + pl, ": ", 2))
        return;
    const char *rest = err + pl + 2;
    size_t kl = strcspn(rest, ".[: ");
    if (!kl || !strchr(".[:", rest[kl]) || kl > 200)
        return;
    char want[210];
    snprintf(want, sizeof(want), ",%.*s,", (int)kl, rest);
    if (!strstr(keys, want))
        return;
    char tail[4096];
    snprintf(tail, sizeof(tail), "%s", rest);
    snprintf(err, errlen, "%s: %s", name, tail);
}

int lp_config_admin_json = 1;
int lp_config_cache_disk = 0;
int lp_config_overlay = LP_OVERLAY_APPLY;
const char *lp_config_source_doc = NULL;

int lp_config_load(const char *path, lp_config_t **out, char *err, size_t errlen)
{
    *out = NULL;
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "%s: out of memory", path);
        return LP_ENOMEM;
    }
    luaL_openlibs(L);
    lp_lua_seed_random(L); /* a config may draw random weights or names */
    /* This VM runs the config once and is closed: compiling traces costs more than it saves,
     * and each trace makes the JIT flip its machine-code pages with mprotect, which flushes
     * every CPU's TLB (most of a reload's CPU time, and slow on a busy machine). */
    luaJIT_setmode(L, 0, LUAJIT_MODE_ENGINE | LUAJIT_MODE_OFF);
    lp_lua_set_paths(L, path);
    /* Step 1: the one evaluation of the file, and its validation. The transfer module notes
     * the globals there were before, to move the ones the file defines. */
    if (luaL_dostring(L, "require('luaproxy.transfer').snapshot()"))
        lua_pop(L, 1);
    if (lp_lua_eval_config(L, path, err, errlen)) {
        lua_close(L);
        return LP_ECONFIG;
    }
    int raw = lua_gettop(L);
    lp_config_t *c = calloc(1, sizeof(*c));
    if (c && !(c->todo = calloc(1, sizeof(*c->todo)))) {
        free(c);
        c = NULL;
    }
    rctx_t r = {L, path, err, errlen, c, 0, NULL, NULL, NULL};
    int rc = c ? 0 : LP_ENOMEM;
    if (!rc)
        rc = call_lua(L, path, "luaproxy.config", "check", 0, raw, err, errlen);
    if (!rc && !(c->path = strdup(path)))
        rc = LP_ENOMEM;
    if (!rc && lp_config_source_doc && !(c->source_doc = strdup(lp_config_source_doc)))
        rc = LP_ENOMEM;
    if (!rc)
        rc = keep_source(L, c);
    /* Step 2, then the plugins and handlers as the workers will load them. */
    if (!rc)
        rc = read_config(&r);
    if (!rc && c->has_lua)
        rc = lp_lua_check_config(L, path, err, errlen);
    if (!rc && c->has_lua)
        rc = encode_for_workers(L, c);
    /* GET /config's body, while the plugins' schemas are at hand. */
    char jerr[256];
    if (!rc && lp_config_admin_json) {
        if (call_lua(L, path, "luaproxy.admin", "config_json", 1, raw, jerr, sizeof(jerr)))
            lp_log_warn("admin: cannot encode the config: %s", jerr);
        else if (!(c->json = strdup(lua_tostring(L, -1))))
            rc = LP_ENOMEM;
    }
    if (rc)
        relocate_error(L, path, err, errlen);
    lua_close(L);
    if (rc) {
        if (rc == LP_ENOMEM)
            snprintf(err, errlen, "%s: out of memory", path);
        lp_config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

int lp_config_materialise(lp_config_t *c, char *err, size_t errlen)
{
    if (!c->todo)
        return 0; /* done already */
    rctx_t r = {NULL,
                c->path,
                err,
                errlen,
                c,
                0,
                c->todo->server_tls,
                c->todo->client_tls,
                c->todo->client_tls_on};
    int rc = resolve(&r);
    todo_free(c);
    c->materialised = rc == 0;
    return rc;
}

void lp_config_free(lp_config_t *c)
{
    if (!c)
        return;
    todo_free(c);
    for (size_t i = 0; i < c->nlisten; i++) {
        free(c->listen[i].addr.text);
        free(c->listen[i].trusted);
        free(c->listen[i].realip_header);
        lp_tls_server_unref(c->listen[i].tls);
    }
    free(c->listen);
    for (size_t i = 0; i < c->nupstreams; i++) {
        lp_upstream_conf_t *u = &c->upstreams[i];
        for (size_t j = 0; j < u->ntargets; j++) {
            lp_target_conf_t *t = &u->targets[j];
            free(t->addr.text);
            free(t->host);
            for (size_t k = 0; k < t->nresolved; k++)
                free(t->resolved[k].text);
            free(t->resolved);
        }
        free(u->targets);
        free(u->name);
        free(u->balance);
        free(u->hash_name);
        free(u->health.path);
        lp_tls_client_unref(u->tls);
    }
    free(c->upstreams);
    for (size_t i = 0; i < c->nroutes; i++) {
        free(c->routes[i].name);
        free(c->routes[i].host);
        free(c->routes[i].prefix);
        free_error_pages(&c->routes[i].error_pages);
    }
    free(c->routes);
    lp_rtable_unref(c->rtable);
    free(c->overlay_error);
    lp_router_free(c->router);
    free(c->metrics.buckets);
    free_error_pages(&c->error_pages);
    free(c->access_log);
    free_log_output(&c->access_out);
    free_log_output(&c->error_out);
    free(c->access_format.text);
    for (size_t i = 0; i < c->access_format.njson; i++) {
        free(c->access_format.json[i].name);
        free(c->access_format.json[i].value);
    }
    free(c->access_format.json);
    free(c->admin.text);
    free(c->tracing.collector.text);
    free(c->tracing.collector_host);
    free(c->tracing.collector_path);
    free(c->tracing.service_name);
    if (c->admin_token)
        OPENSSL_cleanse(c->admin_token, strlen(c->admin_token));
    free(c->admin_token);
    free(c->pid_file);
    free(c->config_source);
    free(c->source_doc);
    free(c->source_name);
    free(c->source_keys);
    for (size_t i = 0; i < c->nfiles; i++)
        free(c->files[i]);
    free(c->files);
    free(c->json);
    free(c->lua_config);
    for (size_t i = 0; i < c->nshdicts; i++)
        lp_shdict_release(c->shdicts[i]);
    free(c->shdicts);
    free(c->shdict_sizes);
    for (size_t i = 0; i < c->ncache_zones; i++)
        lp_cache_zone_release(c->cache_zones[i]);
    free(c->cache_zones);
    free(c->cache_memory);
    free(c->cache_max_object);
    free(c->cache_disk_size);
    free(c->path);
    free(c);
}
