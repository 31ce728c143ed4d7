#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/tls1.h>
#include <uv.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>
#include "common.h"
#include "config.h"
#include "balancer.h"
#include "lua_vm.h"
#include "tls.h"

/* Validation context. Every check writes "file: key.path: problem" into err. */
typedef struct {
    lua_State *L;
    const char *file;
    char *err;
    size_t errlen;
    lp_config_t *c; /* the config being built */
} vctx_t;

static int fail(vctx_t *v, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(vctx_t *v, const char *path, const char *fmt, ...)
{
    int n = snprintf(v->err, v->errlen, "%s: %s: ", v->file, path);
    if (n < 0 || (size_t)n >= v->errlen)
        return LP_ECONFIG;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->err + n, v->errlen - (size_t)n, fmt, ap);
    va_end(ap);
    return LP_ECONFIG;
}

static void join(char *out, size_t outlen, const char *path, const char *key)
{
    if (!path || !*path)
        snprintf(out, outlen, "%s", key);
    else
        snprintf(out, outlen, "%s.%s", path, key);
}

static void join_index(char *out, size_t outlen, const char *path, size_t i)
{
    snprintf(out, outlen, "%s[%zu]", path, i);
}

/* Every key of the table at the top of the stack must be a string in `allowed`. */
static int check_keys(vctx_t *v, const char *path, const char *const *allowed)
{
    lua_State *L = v->L;
    lua_pushnil(L);
    while (lua_next(L, -2)) {
        lua_pop(L, 1);
        if (lua_type(L, -1) != LUA_TSTRING) {
            lua_pop(L, 1);
            return fail(v, path && *path ? path : "(top)", "unexpected non-string key");
        }
        const char *k = lua_tostring(L, -1);
        int ok = 0;
        for (const char *const *a = allowed; *a; a++)
            if (strcmp(*a, k) == 0)
                ok = 1;
        if (!ok) {
            char p[512];
            join(p, sizeof(p), path, k);
            lua_pop(L, 1);
            return fail(v, p, "unknown key");
        }
    }
    return 0;
}

/* The value of key `k` of the table at the top of the stack is pushed; returns its type. */
static int field(vctx_t *v, const char *k)
{
    lua_getfield(v->L, -1, k);
    return lua_type(v->L, -1);
}

static const char *type_name(vctx_t *v)
{
    return lua_typename(v->L, lua_type(v->L, -1));
}

static int opt_number(vctx_t *v, const char *path, const char *k, double min, double max,
                      double def, double *out)
{
    char p[512];
    join(p, sizeof(p), path, k);
    int t = field(v, k);
    if (t == LUA_TNIL) {
        *out = def;
    } else if (t != LUA_TNUMBER) {
        int rc = fail(v, p, "expected a number, got %s", type_name(v));
        lua_pop(v->L, 1);
        return rc;
    } else {
        double d = lua_tonumber(v->L, -1);
        if (!(d >= min && d <= max)) {
            lua_pop(v->L, 1);
            return fail(v, p, "must be between %g and %g", min, max);
        }
        *out = d;
    }
    lua_pop(v->L, 1);
    return 0;
}

static int opt_integer(vctx_t *v, const char *path, const char *k, double min, double max,
                       double def, uint64_t *out)
{
    double d;
    int rc = opt_number(v, path, k, min, max, def, &d);
    if (rc)
        return rc;
    if (d != floor(d)) {
        char p[512];
        join(p, sizeof(p), path, k);
        return fail(v, p, "must be a whole number");
    }
    *out = (uint64_t)d;
    return 0;
}

static int opt_seconds_ms(vctx_t *v, const char *path, const char *k, double def, uint64_t *out)
{
    double d;
    int rc = opt_number(v, path, k, 0.001, 86400.0 * 365, def, &d);
    if (!rc)
        *out = (uint64_t)(d * 1000.0 + 0.5);
    return rc;
}

static int opt_bool(vctx_t *v, const char *path, const char *k, int def, int *out)
{
    int t = field(v, k);
    if (t == LUA_TNIL) {
        *out = def;
    } else if (t != LUA_TBOOLEAN) {
        char p[512];
        join(p, sizeof(p), path, k);
        int rc = fail(v, p, "expected a boolean, got %s", type_name(v));
        lua_pop(v->L, 1);
        return rc;
    } else {
        *out = lua_toboolean(v->L, -1);
    }
    lua_pop(v->L, 1);
    return 0;
}

/* Copies an optional string (NULL when absent). */
static int opt_string(vctx_t *v, const char *path, const char *k, char **out)
{
    int t = field(v, k);
    *out = NULL;
    if (t != LUA_TNIL) {
        if (t != LUA_TSTRING) {
            char p[512];
            join(p, sizeof(p), path, k);
            int rc = fail(v, p, "expected a string, got %s", type_name(v));
            lua_pop(v->L, 1);
            return rc;
        }
        *out = strdup(lua_tostring(v->L, -1));
    }
    lua_pop(v->L, 1);
    return 0;
}

/* The table at key k is pushed (or nothing, returning 1, when absent). */
static int opt_table(vctx_t *v, const char *path, const char *k, int *present)
{
    int t = field(v, k);
    *present = 0;
    if (t == LUA_TNIL) {
        lua_pop(v->L, 1);
        return 0;
    }
    if (t != LUA_TTABLE) {
        char p[512];
        join(p, sizeof(p), path, k);
        int rc = fail(v, p, "expected a table, got %s", type_name(v));
        lua_pop(v->L, 1);
        return rc;
    }
    *present = 1;
    return 0;
}

/* A table used as a list: its length, after checking there is nothing but 1..n in it. */
static int list_len(vctx_t *v, const char *path, size_t *n)
{
    size_t len = lua_objlen(v->L, -1), count = 0;
    lua_pushnil(v->L);
    while (lua_next(v->L, -2)) {
        lua_pop(v->L, 1);
        count++;
        if (lua_type(v->L, -1) != LUA_TNUMBER) {
            lua_pop(v->L, 1);
            return fail(v, path, "expected a list, found key \"%s\"",
                        lua_type(v->L, -1) == LUA_TSTRING ? lua_tostring(v->L, -1) : "?");
        }
    }
    if (count != len)
        return fail(v, path, "expected a list without holes");
    *n = len;
    return 0;
}

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

static int parse_address_value(vctx_t *v, const char *path, lp_addr_t *out)
{
    if (lua_type(v->L, -1) != LUA_TSTRING)
        return fail(v, path, "expected an address string \"host:port\", got %s", type_name(v));
    char msg[300];
    if (lp_addr_parse(lua_tostring(v->L, -1), out, msg, sizeof(msg)))
        return fail(v, path, "%s", msg);
    return 0;
}

/* ---- TLS ---- */

static int file_path(vctx_t *v, const char *path, char **out);

/* A file named in the config: relative paths are relative to the config file. Each one is
 * listed in c->files, which --watch follows. */
static int opt_path(vctx_t *v, const char *path, const char *k, char **out)
{
    int rc = opt_string(v, path, k, out);
    if (rc || !*out)
        return rc;
    return file_path(v, path, out);
}

/* *out (owned) made relative to the config file's directory, and listed in c->files. */
static int file_path(vctx_t *v, const char *path, char **out)
{
    const char *slash = strrchr(v->file, '/');
    if ((*out)[0] != '/' && slash) {
        size_t dlen = (size_t)(slash - v->file), n = dlen + 1 + strlen(*out) + 1;
        char *full = malloc(n);
        if (!full)
            return fail(v, path, "out of memory");
        snprintf(full, n, "%.*s/%s", (int)dlen, v->file, *out);
        free(*out);
        *out = full;
    }
    char **a = realloc(v->c->files, (v->c->nfiles + 1) * sizeof(char *));
    if (!a || !(a[v->c->nfiles] = strdup(*out))) {
        if (a)
            v->c->files = a;
        return fail(v, path, "out of memory");
    }
    v->c->files = a;
    v->c->nfiles++;
    return 0;
}

/* An optional list of non-empty strings (`what` names one in errors); with is_path each is
 * a file name, resolved as opt_path does. */
static int opt_string_list(vctx_t *v, const char *path, const char *k, const char *what,
                           int is_path, char ***out, size_t *n)
{
    char pl[512];
    int rc, present;
    join(pl, sizeof(pl), path, k);
    if ((rc = opt_table(v, path, k, &present)) || !present)
        return rc;
    size_t len;
    if (!(rc = list_len(v, pl, &len)) && !(*out = calloc(len ? len : 1, sizeof(char *))))
        rc = fail(v, pl, "out of memory");
    for (size_t i = 0; !rc && i < len; i++) {
        char pi[512];
        join_index(pi, sizeof(pi), pl, i + 1);
        lua_rawgeti(v->L, -1, (int)i + 1);
        if (lua_type(v->L, -1) != LUA_TSTRING)
            rc = fail(v, pi, "expected a %s, got %s", what, type_name(v));
        else if (!lua_objlen(v->L, -1))
            rc = fail(v, pi, "expected a %s", what);
        else if (!((*out)[i] = strdup(lua_tostring(v->L, -1))))
            rc = fail(v, pi, "out of memory");
        else if (++*n && is_path)
            rc = file_path(v, pi, &(*out)[i]);
        lua_pop(v->L, 1);
    }
    lua_pop(v->L, 1);
    return rc;
}

static int opt_tls_version(vctx_t *v, const char *path, const char *k, int *out)
{
    char *s = NULL, p[512];
    int rc = opt_string(v, path, k, &s);
    *out = TLS1_2_VERSION;
    if (!rc && s) {
        if (strcmp(s, "TLSv1.3") == 0)
            *out = TLS1_3_VERSION;
        else if (strcmp(s, "TLSv1.2") != 0) {
            join(p, sizeof(p), path, k);
            rc = fail(v, p, "\"%s\": expected \"TLSv1.2\" or \"TLSv1.3\"", s);
        }
    }
    free(s);
    return rc;
}

static int required_path(vctx_t *v, const char *path, const char *k, char **out)
{
    int rc = opt_path(v, path, k, out);
    if (!rc && !*out) {
        char p[512];
        join(p, sizeof(p), path, k);
        return fail(v, p, "required");
    }
    return rc;
}

/* A certificate entry at the top of the stack: { cert =, key =, names = {...} }. */
static int load_tls_cert(vctx_t *v, const char *p, lp_tls_cert_conf_t *cc)
{
    static const char *const keys[] = {"cert", "key", "names", NULL};
    int rc;
    if (lua_type(v->L, -1) != LUA_TTABLE)
        return fail(v, p, "expected a table { cert =, key = }, got %s", type_name(v));
    if ((rc = check_keys(v, p, keys)) || (rc = required_path(v, p, "cert", &cc->cert)) ||
        (rc = required_path(v, p, "key", &cc->key)))
        return rc;
    return opt_string_list(v, p, "names", "host name", 0, &cc->names, &cc->nnames);
}

/* listen[i].tls, the table at the top of the stack. */
static int load_tls_server(vctx_t *v, const char *p, lp_listen_conf_t *lc)
{
    static const char *const keys[] = {"cert",
                                       "key",
                                       "certificates",
                                       "client_ca",
                                       "verify_client",
                                       "ciphers",
                                       "ciphersuites",
                                       "min_version",
                                       "session_tickets",
                                       "session_cache",
                                       "session_timeout",
                                       "handshake_timeout",
                                       "session_ticket_keys",
                                       NULL};
    lp_tls_server_conf_t tc = {0};
    int rc, present;
    char pc[512];
    if (lua_type(v->L, -1) != LUA_TTABLE)
        return fail(v, p, "expected a table { cert =, key = }, got %s", type_name(v));
    if ((rc = check_keys(v, p, keys)))
        return rc;
    join(pc, sizeof(pc), p, "certificates");
    if ((rc = opt_table(v, p, "certificates", &present)))
        return rc;
    size_t n = 0;
    if (present) {
        if (!(rc = list_len(v, pc, &n)) && n == 0)
            rc = fail(v, pc, "at least one certificate is required");
        if (!rc && !(tc.certs = calloc(n, sizeof(*tc.certs))))
            rc = fail(v, pc, "out of memory");
        for (size_t i = 0; !rc && i < n; i++) {
            char pi[512];
            join_index(pi, sizeof(pi), pc, i + 1);
            lua_rawgeti(v->L, -1, (int)i + 1);
            tc.ncerts++;
            rc = load_tls_cert(v, pi, &tc.certs[i]);
            lua_pop(v->L, 1);
        }
        lua_pop(v->L, 1);
    }
    char *cert = NULL, *key = NULL;
    if (!rc)
        rc = opt_path(v, p, "cert", &cert);
    if (!rc)
        rc = opt_path(v, p, "key", &key);
    if (!rc && (cert || key)) {
        /* The single-certificate form goes first: it is the default. */
        lp_tls_cert_conf_t *a = realloc(tc.certs, (tc.ncerts + 1) * sizeof(*a));
        if (!a || !cert || !key) {
            rc = fail(v, p, a ? "cert and key go together" : "out of memory");
            if (a)
                tc.certs = a;
        } else {
            tc.certs = a;
            memmove(a + 1, a, tc.ncerts * sizeof(*a));
            memset(a, 0, sizeof(*a));
            a[0].cert = cert;
            a[0].key = key;
            cert = key = NULL;
            tc.ncerts++;
        }
    }
    free(cert);
    free(key);
    if (!rc && tc.ncerts == 0)
        rc = fail(v, p, "a certificate is required (cert and key, or certificates)");
    char *verify = NULL;
    if (!rc)
        rc = opt_path(v, p, "client_ca", &tc.client_ca);
    if (!rc)
        rc = opt_string(v, p, "verify_client", &verify);
    if (!rc) {
        char pv[512];
        join(pv, sizeof(pv), p, "verify_client");
        if (!verify || strcmp(verify, "required") == 0)
            tc.verify_client = tc.client_ca ? LP_TLS_VERIFY_REQUIRED : LP_TLS_VERIFY_OFF;
        else if (strcmp(verify, "optional") == 0)
            tc.verify_client = LP_TLS_VERIFY_OPTIONAL;
        else
            rc = fail(v, pv, "\"%s\": expected \"required\" or \"optional\"", verify);
        if (!rc && verify && !tc.client_ca)
            rc = fail(v, pv, "needs client_ca");
    }
    free(verify);
    uint64_t cache = 20480, timeout_ms = 0;
    if (!rc)
        rc = opt_string(v, p, "ciphers", &tc.ciphers);
    if (!rc)
        rc = opt_string(v, p, "ciphersuites", &tc.ciphersuites);
    if (!rc)
        rc = opt_tls_version(v, p, "min_version", &tc.min_version);
    if (!rc)
        rc = opt_bool(v, p, "session_tickets", 1, &tc.session_tickets);
    if (!rc)
        rc = opt_integer(v, p, "session_cache", 0, 1e7, 20480, &cache);
    if (!rc)
        rc = opt_seconds_ms(v, p, "session_timeout", 3600, &timeout_ms);
    if (!rc)
        rc = opt_seconds_ms(v, p, "handshake_timeout", 10, &tc.handshake_timeout);
    if (!rc)
        rc = opt_string_list(v, p, "session_ticket_keys", "file name", 1, &tc.ticket_key_files,
                             &tc.nticket_key_files);
    tc.session_cache = (unsigned)cache;
    tc.session_timeout_s = timeout_ms / 1000 ? timeout_ms / 1000 : 1;
    if (!rc) {
        char msg[512];
        lc->tls = lp_tls_server_new(&tc, msg, sizeof(msg));
        if (!lc->tls)
            rc = fail(v, p, "%s", msg);
    }
    lp_tls_server_conf_free(&tc);
    return rc;
}

/* upstreams.NAME.tls: true, or a table; the value is at the top of the stack. */
static int load_tls_client(vctx_t *v, const char *p, lp_upstream_conf_t *u)
{
    static const char *const keys[] = {"verify", "ca",      "sni",         "cert",
                                       "key",    "ciphers", "min_version", NULL};
    lp_tls_client_conf_t tc = {0};
    int rc = 0;
    tc.verify = 1;
    tc.min_version = TLS1_2_VERSION;
    if (lua_type(v->L, -1) == LUA_TBOOLEAN) {
        if (!lua_toboolean(v->L, -1))
            return 0;
    } else if (lua_type(v->L, -1) != LUA_TTABLE) {
        return fail(v, p, "expected true or a table { verify =, ca =, sni = }, got %s",
                    type_name(v));
    } else if (!(rc = check_keys(v, p, keys))) {
        if (!rc)
            rc = opt_bool(v, p, "verify", 1, &tc.verify);
        if (!rc)
            rc = opt_path(v, p, "ca", &tc.ca);
        if (!rc)
            rc = opt_string(v, p, "sni", &tc.sni);
        if (!rc)
            rc = opt_path(v, p, "cert", &tc.cert);
        if (!rc)
            rc = opt_path(v, p, "key", &tc.key);
        if (!rc)
            rc = opt_string(v, p, "ciphers", &tc.ciphers);
        if (!rc)
            rc = opt_tls_version(v, p, "min_version", &tc.min_version);
        if (!rc && !tc.cert != !tc.key)
            rc = fail(v, p, "cert and key go together");
    }
    if (!rc) {
        char msg[512];
        u->tls = lp_tls_client_new(&tc, msg, sizeof(msg));
        if (!u->tls)
            rc = fail(v, p, "%s", msg);
    }
    lp_tls_client_conf_free(&tc);
    return rc;
}

static int load_listen(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"address", "backlog", "tls", NULL};
    int present, rc;
    if ((rc = opt_table(v, "", "listen", &present)))
        return rc;
    if (!present)
        return fail(v, "listen", "at least one listener is required");
    size_t n;
    if ((rc = list_len(v, "listen", &n)))
        goto out;
    if (n == 0) {
        rc = fail(v, "listen", "at least one listener is required");
        goto out;
    }
    c->listen = calloc(n, sizeof(*c->listen));
    c->nlisten = n;
    for (size_t i = 0; i < n && !rc; i++) {
        char p[512], pa[512];
        join_index(p, sizeof(p), "listen", i + 1);
        lua_rawgeti(v->L, -1, (int)i + 1);
        if (lua_type(v->L, -1) != LUA_TTABLE) {
            rc = fail(v, p, "expected a table { address = \"host:port\" }, got %s", type_name(v));
        } else if (!(rc = check_keys(v, p, keys))) {
            join(pa, sizeof(pa), p, "address");
            field(v, "address");
            if (lua_isnil(v->L, -1))
                rc = fail(v, pa, "required");
            else
                rc = parse_address_value(v, pa, &c->listen[i].addr);
            lua_pop(v->L, 1);
            uint64_t backlog = 511;
            if (!rc)
                rc = opt_integer(v, p, "backlog", 1, 65535, 511, &backlog);
            c->listen[i].backlog = (int)backlog;
            if (!rc) {
                if (field(v, "tls") != LUA_TNIL) {
                    char ptls[512];
                    join(ptls, sizeof(ptls), p, "tls");
                    rc = load_tls_server(v, ptls, &c->listen[i]);
                }
                lua_pop(v->L, 1);
            }
        }
        lua_pop(v->L, 1);
    }
out:
    lua_pop(v->L, 1);
    return rc;
}

/* A target's address: an IP address as is; a name becomes a DNS target, resolved now (the
 * config is loaded off the workers' loops) and again every dns_ttl by each worker. A name
 * that does not resolve is not an error: it has no address until it does. */
static int parse_target_address(vctx_t *v, const char *path, lp_target_conf_t *t)
{
    if (lua_type(v->L, -1) != LUA_TSTRING)
        return fail(v, path, "expected an address string \"host:port\", got %s", type_name(v));
    const char *text = lua_tostring(v->L, -1);
    char host[256], msg[300];
    if (lp_addr_split(text, host, sizeof(host), &t->port, msg, sizeof(msg)))
        return fail(v, path, "%s", msg);
    if (!host[0] || lp_addr_is_ip(host))
        return parse_address_value(v, path, &t->addr);
    if (!(t->addr.text = strdup(text)) || !(t->host = strdup(host)) ||
        !(t->resolved = calloc(LP_DNS_MAX_ADDRS, sizeof(*t->resolved))))
        return fail(v, path, "out of memory");
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_ADDRCONFIG;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc || !res) {
        lp_log_warn("%s: %s: cannot resolve \"%s\" (%s): no address until it does", v->file, path,
                    host, gai_strerror(rc));
        return 0;
    }
    t->nresolved = lp_addr_from_ai(res, t->port, t->resolved, LP_DNS_MAX_ADDRS);
    freeaddrinfo(res);
    return 0;
}

/* "http://host[:port]" and "https://host[:port]" (a trailing "/" allowed): the scheme's
 * default port, and https marks the target for TLS. Other strings are left as they are. */
static int parse_target_url(vctx_t *v, const char *path, lp_target_conf_t *t)
{
    const char *text = lua_tostring(v->L, -1);
    int https = strncmp(text, "https://", 8) == 0;
    if (!https && strncmp(text, "http://", 7) != 0)
        return parse_target_address(v, path, t);
    const char *host = text + (https ? 8 : 7);
    size_t n = strlen(host);
    if (n && host[n - 1] == '/')
        n--;
    if (!n || memchr(host, '/', n) || memchr(host, '@', n) || n > 300)
        return fail(v, path, "\"%s\": expected scheme://host[:port] without a path", text);
    const char *bracket = memchr(host, ']', n);
    const char *colon = bracket ? (bracket + 1 < host + n && bracket[1] == ':' ? bracket + 1 : NULL)
                                : memchr(host, ':', n);
    char norm[320];
    snprintf(norm, sizeof(norm), "%.*s%s", (int)n, host, colon ? "" : https ? ":443" : ":80");
    lua_pushstring(v->L, norm);
    int rc = parse_target_address(v, path, t);
    lua_pop(v->L, 1);
    t->https = https;
    return rc;
}

static int load_target(vctx_t *v, const char *p, lp_target_conf_t *t)
{
    static const char *const keys[] = {"address", "weight", NULL};
    int rc;
    t->weight = 1;
    if (lua_type(v->L, -1) == LUA_TSTRING)
        return parse_target_url(v, p, t);
    if (lua_type(v->L, -1) != LUA_TTABLE)
        return fail(v, p, "expected \"host:port\" or { address =, weight = }, got %s",
                    type_name(v));
    if ((rc = check_keys(v, p, keys)))
        return rc;
    char pa[512];
    join(pa, sizeof(pa), p, "address");
    field(v, "address");
    if (lua_isnil(v->L, -1))
        rc = fail(v, pa, "required");
    else if (lua_type(v->L, -1) != LUA_TSTRING)
        rc = parse_target_address(v, pa, t); /* the type error */
    else
        rc = parse_target_url(v, pa, t);
    lua_pop(v->L, 1);
    uint64_t w = 1;
    if (!rc)
        rc = opt_integer(v, p, "weight", 1, 10000, 1, &w);
    t->weight = (unsigned)w;
    return rc;
}

/* A list of statuses into a set; absent: `def_lo..def_hi` (0, 0: empty). */
static int opt_statuses(vctx_t *v, const char *path, const char *k, int def_lo, int def_hi,
                        lp_status_set_t *out)
{
    char p[512];
    join(p, sizeof(p), path, k);
    memset(out, 0, sizeof(*out));
    int t = field(v, k), rc = 0;
    if (t == LUA_TNIL) {
        for (int s = def_lo; def_lo && s <= def_hi; s++)
            out->bits[(s - 100) / 64] |= 1ull << ((s - 100) % 64);
    } else if (t != LUA_TTABLE) {
        rc = fail(v, p, "expected a list of statuses");
    } else {
        size_t n;
        if (!(rc = list_len(v, p, &n))) {
            for (size_t i = 1; i <= n && !rc; i++) {
                lua_rawgeti(v->L, -1, (int)i);
                double d = lua_tonumber(v->L, -1);
                if (lua_type(v->L, -1) != LUA_TNUMBER || d < 100 || d > 599 || d != floor(d))
                    rc = fail(v, p, "statuses are whole numbers from 100 to 599");
                else
                    out->bits[((int)d - 100) / 64] |= 1ull << (((int)d - 100) % 64);
                lua_pop(v->L, 1);
            }
        }
    }
    lua_pop(v->L, 1);
    return rc;
}

static int load_health(vctx_t *v, const char *upath, lp_health_conf_t *hc)
{
    static const char *const keys[] = {"active", "passive", NULL};
    static const char *const akeys[] = {"type",    "path",      "interval", "timeout",
                                        "healthy", "unhealthy", "statuses", NULL};
    static const char *const pkeys[] = {"failures", "statuses", "ejection", NULL};
    char p[512], pa[512], pp[512];
    int present, rc;
    join(p, sizeof(p), upath, "health");
    join(pa, sizeof(pa), p, "active");
    join(pp, sizeof(pp), p, "passive");
    if ((rc = opt_table(v, upath, "health", &present)))
        return rc;
    if (!present)
        lua_newtable(v->L);
    if ((rc = check_keys(v, p, keys)))
        goto out;
    /* Active checks: off unless configured. */
    int apresent;
    if ((rc = opt_table(v, p, "active", &apresent)))
        goto out;
    if (!apresent)
        lua_newtable(v->L);
    hc->active = apresent;
    char *type = NULL;
    uint64_t healthy = 2, unhealthy = 2;
    if (!(rc = check_keys(v, pa, akeys)) && !(rc = opt_string(v, pa, "type", &type)) &&
        !(rc = opt_string(v, pa, "path", &hc->path)) &&
        !(rc = opt_seconds_ms(v, pa, "interval", 5, &hc->interval)) &&
        !(rc = opt_seconds_ms(v, pa, "timeout", 1, &hc->timeout)) &&
        !(rc = opt_integer(v, pa, "healthy", 1, 100, 2, &healthy)) &&
        !(rc = opt_integer(v, pa, "unhealthy", 1, 100, 2, &unhealthy)))
        rc = opt_statuses(v, pa, "statuses", 200, 399, &hc->active_statuses);
    hc->healthy = (unsigned)healthy;
    hc->unhealthy = (unsigned)unhealthy;
    hc->active_http = !type || strcmp(type, "http") == 0;
    if (!rc && type && strcmp(type, "http") && strcmp(type, "tcp")) {
        char pt[600];
        join(pt, sizeof(pt), pa, "type");
        rc = fail(v, pt, "\"%s\": expected http or tcp", type);
    }
    free(type);
    if (!rc && !hc->path)
        hc->path = strdup("/");
    if (!rc && hc->path[0] != '/') {
        char pt[600];
        join(pt, sizeof(pt), pa, "path");
        rc = fail(v, pt, "must start with \"/\"");
    }
    lua_pop(v->L, 1);
    if (rc)
        goto out;
    /* Passive checks: on by default (5 consecutive connection failures or timeouts). */
    int ppresent;
    if ((rc = opt_table(v, p, "passive", &ppresent)))
        goto out;
    if (!ppresent)
        lua_newtable(v->L);
    uint64_t failures = 5;
    if (!(rc = check_keys(v, pp, pkeys)) &&
        !(rc = opt_integer(v, pp, "failures", 0, 1000, 5, &failures)) &&
        !(rc = opt_seconds_ms(v, pp, "ejection", 10, &hc->ejection)))
        rc = opt_statuses(v, pp, "statuses", 0, 0, &hc->passive_statuses);
    hc->passive_failures = (unsigned)failures;
    lua_pop(v->L, 1);
out:
    lua_pop(v->L, 1);
    return rc;
}

static int parse_hash_on(vctx_t *v, const char *path, const char *s, lp_upstream_conf_t *u)
{
    static const struct {
        const char *prefix;
        lp_hash_on_t on;
        int named;
    } kinds[] = {{"ip", LP_HASH_IP, 0},
                 {"path", LP_HASH_PATH, 0},
                 {"header:", LP_HASH_HEADER, 1},
                 {"cookie:", LP_HASH_COOKIE, 1},
                 {"query:", LP_HASH_QUERY, 1}};
    u->hash_on = LP_HASH_IP;
    if (!s)
        return 0;
    for (size_t i = 0; i < LP_ARRAY_LEN(kinds); i++) {
        size_t n = strlen(kinds[i].prefix);
        if (kinds[i].named ? strncmp(s, kinds[i].prefix, n) == 0 && s[n]
                           : strcmp(s, kinds[i].prefix) == 0) {
            u->hash_on = kinds[i].on;
            if (kinds[i].named)
                u->hash_name = strdup(s + n);
            return 0;
        }
    }
    char ph[512];
    join(ph, sizeof(ph), path, "hash_on");
    return fail(v, ph, "\"%s\": expected ip, path, header:NAME, cookie:NAME or query:NAME", s);
}

static int load_upstreams(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"targets",
                                       "balance",
                                       "hash_on",
                                       "keepalive",
                                       "keepalive_timeout",
                                       "keepalive_requests",
                                       "health",
                                       "retries",
                                       "retry_on",
                                       "retry_budget",
                                       "max_connections",
                                       "max_pending",
                                       "pending_timeout",
                                       "total_timeout",
                                       "dns_ttl",
                                       "tls",
                                       NULL};
    int present, rc = 0;
    if ((rc = opt_table(v, "", "upstreams", &present)))
        return rc;
    if (!present)
        return 0;
    size_t n = 0;
    lua_pushnil(v->L);
    while (lua_next(v->L, -2)) {
        lua_pop(v->L, 1);
        if (lua_type(v->L, -1) != LUA_TSTRING) {
            lua_pop(v->L, 2);
            return fail(v, "upstreams", "upstream names must be strings");
        }
        n++;
    }
    c->upstreams = calloc(n ? n : 1, sizeof(*c->upstreams));
    lua_pushnil(v->L);
    while (!rc && lua_next(v->L, -2)) {
        const char *name = lua_tostring(v->L, -2);
        lp_upstream_conf_t *u = &c->upstreams[c->nupstreams++];
        u->name = strdup(name);
        char p[512], pt[512];
        join(p, sizeof(p), "upstreams", name);
        if (lua_type(v->L, -1) != LUA_TTABLE) {
            rc = fail(v, p, "expected a table, got %s", type_name(v));
            lua_pop(v->L, 1);
            break;
        }
        if ((rc = check_keys(v, p, keys))) {
            lua_pop(v->L, 1);
            break;
        }
        join(pt, sizeof(pt), p, "targets");
        int tpresent;
        if (!(rc = opt_table(v, p, "targets", &tpresent)) && tpresent) {
            size_t nt;
            if (!(rc = list_len(v, pt, &nt))) {
                if (nt == 0)
                    rc = fail(v, pt, "at least one target is required");
                u->targets = calloc(nt ? nt : 1, sizeof(*u->targets));
                for (size_t i = 0; i < nt && !rc; i++) {
                    char pi[512];
                    join_index(pi, sizeof(pi), pt, i + 1);
                    lua_rawgeti(v->L, -1, (int)i + 1);
                    rc = load_target(v, pi, &u->targets[i]);
                    u->ntargets++;
                    lua_pop(v->L, 1);
                }
            }
            lua_pop(v->L, 1);
        } else if (!rc) {
            rc = fail(v, pt, "required");
        }
        if (!rc)
            rc = opt_string(v, p, "balance", &u->balance);
        if (!rc && !u->balance)
            u->balance = strdup("round_robin");
        if (!rc && !lp_balancer_find(u->balance)) {
            char pb[512];
            join(pb, sizeof(pb), p, "balance");
            rc = fail(v, pb, "unknown policy \"%s\" (round_robin, least_conn, p2c, hash)",
                      u->balance);
        }
        char *hash_on = NULL;
        if (!rc)
            rc = opt_string(v, p, "hash_on", &hash_on);
        if (!rc)
            rc = parse_hash_on(v, p, hash_on, u);
        free(hash_on);
        if (!rc)
            rc = load_health(v, p, &u->health);
        uint64_t retries = 2, maxc = 0;
        if (!rc)
            rc = opt_integer(v, p, "retries", 0, 100, 2, &retries);
        if (!rc)
            rc = opt_statuses(v, p, "retry_on", 0, 0, &u->retry_on);
        if (!rc)
            rc = opt_number(v, p, "retry_budget", 0, 10, 0.2, &u->retry_budget);
        if (!rc)
            rc = opt_integer(v, p, "max_connections", 0, 1e9, 0, &maxc);
        uint64_t maxp = 0;
        if (!rc)
            rc = opt_integer(v, p, "max_pending", 0, 1e9, 0, &maxp);
        if (!rc)
            rc = opt_seconds_ms(v, p, "pending_timeout", 5, &u->pending_timeout);
        double total = 0;
        if (!rc)
            rc = opt_number(v, p, "total_timeout", 0, 86400.0 * 365, 0, &total);
        u->total_timeout = (uint64_t)(total * 1000.0 + 0.5);
        if (!rc)
            rc = opt_seconds_ms(v, p, "dns_ttl", 30, &u->dns_ttl);
        if (!rc && u->dns_ttl < 100) {
            char pd[512];
            join(pd, sizeof(pd), p, "dns_ttl");
            rc = fail(v, pd, "at least 0.1 seconds");
        }
        u->retries = (unsigned)retries;
        u->max_connections = (unsigned)maxc;
        u->max_pending = (unsigned)maxp;
        uint64_t ka = 128, kr = 1000;
        if (!rc)
            rc = opt_integer(v, p, "keepalive", 0, 100000, 128, &ka);
        if (!rc)
            rc = opt_seconds_ms(v, p, "keepalive_timeout", 60, &u->keepalive_timeout);
        if (!rc)
            rc = opt_integer(v, p, "keepalive_requests", 1, 1e9, 1000, &kr);
        u->keepalive = (unsigned)ka;
        u->keepalive_requests = (unsigned)kr;
        if (!rc) {
            char ptls[512];
            join(ptls, sizeof(ptls), p, "tls");
            if (field(v, "tls") != LUA_TNIL)
                rc = load_tls_client(v, ptls, u);
            lua_pop(v->L, 1);
            size_t https = 0;
            for (size_t i = 0; i < u->ntargets; i++)
                https += (size_t)u->targets[i].https;
            if (!rc && https && https != u->ntargets)
                rc = fail(v, pt, "https:// and plain targets cannot share an upstream");
            /* https:// targets: TLS with the defaults (the system CA store) unless tls set. */
            if (!rc && https && !u->tls) {
                lua_pushboolean(v->L, 1);
                rc = load_tls_client(v, ptls, u);
                lua_pop(v->L, 1);
            }
        }
        lua_pop(v->L, 1);
    }
    if (rc)
        lua_pop(v->L, 1); /* the key lua_next left */
    lua_pop(v->L, 1);
    return rc;
}

static int find_upstream(const lp_config_t *c, const char *name, size_t *idx)
{
    for (size_t i = 0; i < c->nupstreams; i++)
        if (strcmp(c->upstreams[i].name, name) == 0) {
            *idx = i;
            return 0;
        }
    return -1;
}

static int valid_host_pattern(const char *h)
{
    if (!*h)
        return 0;
    if (h[0] == '*') {
        if (h[1] != '.' || !h[2])
            return 0;
        h += 2;
    }
    for (; *h; h++)
        if (!(isalnum((unsigned char)*h) || *h == '-' || *h == '.' || *h == '_'))
            return 0;
    return 1;
}

static int load_routes(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"match",   "upstream", "strip_prefix",
                                       "plugins", "handler",  NULL};
    static const char *const match_keys[] = {"host", "prefix", NULL};
    int present, rc;
    if ((rc = opt_table(v, "", "routes", &present)))
        return rc;
    if (!present)
        return fail(v, "routes", "at least one route is required");
    size_t n;
    if ((rc = list_len(v, "routes", &n)))
        goto out;
    c->routes = calloc(n ? n : 1, sizeof(*c->routes));
    for (size_t i = 0; i < n && !rc; i++) {
        lp_route_conf_t *r = &c->routes[c->nroutes++];
        char p[512], pm[512], pu[512];
        join_index(p, sizeof(p), "routes", i + 1);
        lua_rawgeti(v->L, -1, (int)i + 1);
        if (lua_type(v->L, -1) != LUA_TTABLE) {
            rc = fail(v, p, "expected a table, got %s", type_name(v));
            lua_pop(v->L, 1);
            break;
        }
        if ((rc = check_keys(v, p, keys))) {
            lua_pop(v->L, 1);
            break;
        }
        join(pm, sizeof(pm), p, "match");
        int mpresent;
        if (!(rc = opt_table(v, p, "match", &mpresent)) && mpresent) {
            if (!(rc = check_keys(v, pm, match_keys)))
                rc = opt_string(v, pm, "host", &r->host);
            if (!rc && r->host && !valid_host_pattern(r->host)) {
                char ph[512];
                join(ph, sizeof(ph), pm, "host");
                rc = fail(v, ph, "\"%s\" is not a host name or *.suffix wildcard", r->host);
            }
            if (!rc)
                rc = opt_string(v, pm, "prefix", &r->prefix);
            if (!rc && r->prefix && r->prefix[0] != '/') {
                char pp[512];
                join(pp, sizeof(pp), pm, "prefix");
                rc = fail(v, pp, "must start with \"/\"");
            }
            lua_pop(v->L, 1);
        }
        if (!r->prefix)
            r->prefix = strdup("/");
        r->prefix_len = strlen(r->prefix);
        if (r->host)
            for (char *h = r->host; *h; h++)
                *h = (char)tolower((unsigned char)*h);
        char *up = NULL;
        join(pu, sizeof(pu), p, "upstream");
        int lua_route = 0;
        if (!rc) {
            int tp = field(v, "plugins"), th;
            lua_pop(v->L, 1);
            th = field(v, "handler");
            lua_pop(v->L, 1);
            if (tp != LUA_TNIL && tp != LUA_TTABLE) {
                char pp[512];
                join(pp, sizeof(pp), p, "plugins");
                rc = fail(v, pp, "expected a list of plugin entries");
            }
            if (th != LUA_TNIL && th != LUA_TFUNCTION && th != LUA_TSTRING) {
                char ph[512];
                join(ph, sizeof(ph), p, "handler");
                rc = fail(v, ph, "expected a function or a script module name");
            }
            /* With plugins (here or global) or a handler, Lua may choose the upstream. */
            lua_route = tp != LUA_TNIL || th != LUA_TNIL || c->global_plugins;
            if (lua_route)
                c->has_lua = 1;
        }
        if (!rc && !(rc = opt_string(v, p, "upstream", &up))) {
            r->has_upstream = up != NULL;
            if (!up && !lua_route)
                rc = fail(v, pu, "required (or a handler or plugins that choose one)");
            else if (up && find_upstream(c, up, &r->upstream))
                rc = fail(v, pu, "no upstream named \"%s\"", up);
        }
        free(up);
        if (!rc)
            rc = opt_bool(v, p, "strip_prefix", 0, &r->strip_prefix);
        lua_pop(v->L, 1);
    }
out:
    lua_pop(v->L, 1);
    return rc;
}

static int load_timeouts(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"connect",     "read",      "send",  "client_header",
                                       "client_body", "keepalive", "drain", NULL};
    lp_timeouts_t *t = &c->timeouts;
    int present, rc;
    if ((rc = opt_table(v, "", "timeouts", &present)))
        return rc;
    if (!present) {
        lua_newtable(v->L);
    }
    if (!(rc = check_keys(v, "timeouts", keys)) &&
        !(rc = opt_seconds_ms(v, "timeouts", "connect", 5, &t->connect)) &&
        !(rc = opt_seconds_ms(v, "timeouts", "read", 60, &t->read)) &&
        !(rc = opt_seconds_ms(v, "timeouts", "send", 60, &t->send)) &&
        !(rc = opt_seconds_ms(v, "timeouts", "client_header", 10, &t->client_header)) &&
        !(rc = opt_seconds_ms(v, "timeouts", "client_body", 60, &t->client_body)) &&
        !(rc = opt_seconds_ms(v, "timeouts", "keepalive", 75, &t->keepalive)))
        rc = opt_seconds_ms(v, "timeouts", "drain", 30, &t->drain);
    lua_pop(v->L, 1);
    return rc;
}

static int load_limits(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"max_header_size", "max_uri_size",    "max_body_size",
                                       "max_headers",     "max_connections", NULL};
    lp_limits_t *l = &c->limits;
    int present, rc;
    uint64_t hs = 0, us = 0, nh = 0, mc = 0;
    if ((rc = opt_table(v, "", "limits", &present)))
        return rc;
    if (!present)
        lua_newtable(v->L);
    if (!(rc = check_keys(v, "limits", keys)) &&
        !(rc = opt_integer(v, "limits", "max_header_size", 256, 1 << 20, 16384, &hs)) &&
        !(rc = opt_integer(v, "limits", "max_uri_size", 16, 1 << 20, 8192, &us)) &&
        !(rc = opt_integer(v, "limits", "max_body_size", 0, 9.0e15, 1048576, &l->max_body_size)) &&
        !(rc = opt_integer(v, "limits", "max_headers", 1, 10000, 100, &nh)))
        rc = opt_integer(v, "limits", "max_connections", 0, 1 << 24, 10000, &mc);
    l->max_connections = (unsigned)mc;
    l->max_header_size = hs;
    l->max_uri_size = us;
    l->max_headers = (unsigned)nh;
    lua_pop(v->L, 1);
    return rc;
}

static int load_log(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"access", "format", "level", NULL};
    int present, rc;
    if ((rc = opt_table(v, "", "log", &present)))
        return rc;
    if (!present)
        lua_newtable(v->L);
    if ((rc = check_keys(v, "log", keys)))
        goto out;
    int t = field(v, "access");
    if (t == LUA_TNIL) {
        c->access_log = strdup("-");
    } else if (t == LUA_TBOOLEAN && !lua_toboolean(v->L, -1)) {
        c->access_log = NULL;
    } else if (t == LUA_TSTRING && lua_objlen(v->L, -1) > 0) {
        c->access_log = strdup(lua_tostring(v->L, -1));
    } else {
        rc = fail(v, "log.access", "expected a path, \"-\" (stdout) or false");
    }
    lua_pop(v->L, 1);
    if (!rc)
        rc = opt_string(v, "log", "format", &c->access_format);
    if (!rc && !c->access_format)
        c->access_format = strdup(LP_ACCESS_FORMAT_DEFAULT);
    char *level = NULL;
    if (!rc)
        rc = opt_string(v, "log", "level", &level);
    c->log_level = LP_LOG_INFO;
    if (!rc && level && lp_log_level_parse(level, &c->log_level))
        rc = fail(v, "log.level", "unknown level \"%s\" (error, warn, notice, info, debug)", level);
    free(level);
out:
    lua_pop(v->L, 1);
    return rc;
}

static int load_global_plugins(vctx_t *v, lp_config_t *c)
{
    int rc = 0;
    int tp = field(v, "plugins");
    if (tp != LUA_TNIL && tp != LUA_TTABLE)
        rc = fail(v, "plugins", "expected a list of plugin entries");
    if (tp == LUA_TTABLE && lua_objlen(v->L, -1) > 0)
        c->has_lua = c->global_plugins = 1;
    lua_pop(v->L, 1);
    return rc;
}

static int load_lua(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"phase_timeout", "plugin_paths", NULL};
    int present, rc = 0;
    if ((rc = opt_table(v, "", "lua", &present)))
        return rc;
    if (!present)
        lua_newtable(v->L);
    double t = 1;
    if (!(rc = check_keys(v, "lua", keys)) &&
        !(rc = opt_number(v, "lua", "phase_timeout", 0, 3600, 1, &t))) {
        int pp = field(v, "plugin_paths");
        if (pp != LUA_TNIL && pp != LUA_TTABLE)
            rc = fail(v, "lua.plugin_paths", "expected a list of directories");
        lua_pop(v->L, 1);
    }
    c->lua_phase_timeout = (uint64_t)(t * 1000.0 + 0.5);
    lua_pop(v->L, 1);
    return rc;
}

static int load_admin(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"address", NULL};
    int present, rc;
    if ((rc = opt_string(v, "", "pid_file", &c->pid_file)) ||
        (rc = opt_bool(v, "", "watch", 0, &c->watch)) || (rc = opt_table(v, "", "admin", &present)))
        return rc;
    if (!present)
        return 0;
    if (!(rc = check_keys(v, "admin", keys))) {
        field(v, "address");
        if (lua_isnil(v->L, -1))
            rc = fail(v, "admin.address", "required (e.g. \"127.0.0.1:9901\")");
        else
            rc = parse_address_value(v, "admin.address", &c->admin);
        lua_pop(v->L, 1);
    }
    lua_pop(v->L, 1);
    return rc;
}

static int load_top(vctx_t *v, lp_config_t *c)
{
    static const char *const keys[] = {"workers",  "listen", "upstreams", "routes", "timeouts",
                                       "limits",   "log",    "plugins",   "lua",    "admin",
                                       "pid_file", "watch",  NULL};
    int rc;
    uint64_t workers = 0;
    if ((rc = check_keys(v, "", keys)))
        return rc;
    if ((rc = opt_integer(v, "", "workers", 1, 256, 0, &workers)))
        return rc;
    c->workers = (unsigned)workers;
    if (!c->workers) {
        unsigned cpus = uv_available_parallelism();
        c->workers = cpus ? cpus : 1;
    }
    if ((rc = load_global_plugins(v, c)) || (rc = load_listen(v, c)) ||
        (rc = load_upstreams(v, c)) || (rc = load_routes(v, c)) || (rc = load_timeouts(v, c)) ||
        (rc = load_limits(v, c)) || (rc = load_log(v, c)) || (rc = load_lua(v, c)) ||
        (rc = load_admin(v, c)))
        return rc;
    return 0;
}

int lp_config_load(const char *path, lp_config_t **out, char *err, size_t errlen)
{
    *out = NULL;
    lua_State *L = luaL_newstate();
    if (!L) {
        snprintf(err, errlen, "%s: out of memory", path);
        return LP_ENOMEM;
    }
    luaL_openlibs(L);
    lp_lua_set_paths(L, path);
    if (luaL_loadfile(L, path) || lua_pcall(L, 0, 1, 0)) {
        lp_lua_error_message(lua_tostring(L, -1), path, err, errlen);
        lua_close(L);
        return LP_ECONFIG;
    }
    int rc;
    lp_config_t *c = calloc(1, sizeof(*c));
    if (!c) {
        lua_close(L);
        return LP_ENOMEM;
    }
    vctx_t v = {L, path, err, errlen, c};
    c->path = strdup(path);
    if (lua_type(L, -1) != LUA_TTABLE)
        rc = fail(&v, "(top)", "the file must return a table, got %s", type_name(&v));
    else
        rc = load_top(&v, c);
    /* Plugins and handlers are checked by the Lua runtime itself, as the workers load them. */
    if (!rc && c->has_lua)
        rc = lp_lua_check_config(L, path, err, errlen);
    lua_close(L);
    if (rc) {
        lp_config_free(c);
        return rc;
    }
    *out = c;
    return 0;
}

void lp_config_free(lp_config_t *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->nlisten; i++) {
        free(c->listen[i].addr.text);
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
        free(c->routes[i].host);
        free(c->routes[i].prefix);
    }
    free(c->routes);
    free(c->access_log);
    free(c->access_format);
    free(c->admin.text);
    free(c->pid_file);
    for (size_t i = 0; i < c->nfiles; i++)
        free(c->files[i]);
    free(c->files);
    free(c->path);
    free(c);
}
