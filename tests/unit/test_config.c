/* Unit tests for engine/config.c: loading, defaults, validation messages, addresses. */
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <uv.h>
#include "lp_test.h"
#include "common.h"
#include "config.h"
#include "accesslog.h"

/* A config file in /tmp holding `text`; the path is written into `path` (>= 32 bytes). */
static int write_temp(char *path, const char *text)
{
    strcpy(path, "/tmp/lp_unit_cfg_XXXXXX");
    int fd = mkstemp(path);
    if (fd < 0)
        return -1;
    size_t len = strlen(text);
    int ok = write(fd, text, len) == (ssize_t)len;
    close(fd);
    return ok ? 0 : -1;
}

/* Loads `text` as a config file. Returns the rc; err holds the message. */
static int load_text(const char *text, lp_config_t **cfg, char *path, char *err, size_t errlen)
{
    if (write_temp(path, text)) {
        snprintf(err, errlen, "cannot write temp file");
        return 1;
    }
    err[0] = 0;
    int rc = lp_config_load(path, cfg, err, errlen);
    if (!rc) {
        rc = lp_config_materialise(*cfg, err, errlen);
        if (rc) {
            lp_config_free(*cfg);
            *cfg = NULL;
        }
    }
    unlink(path);
    return rc;
}

/* The smallest valid config, with `extra` spliced into the top table. */
#define MINIMAL(extra)                                                                             \
    "return {\n"                                                                                   \
    "  listen = { { address = '127.0.0.1:8080' } },\n"                                             \
    "  upstreams = { app = { targets = { '127.0.0.1:9001' } } },\n"                                \
    "  routes = { { upstream = 'app' } },\n" extra "}\n"

static const char full_config[] =
    "-- a comment\n"
    "return {\n"
    "  workers = 3,\n"
    "  listen = {\n"
    "    { address = '127.0.0.1:8080', backlog = 100 },\n"
    "    { address = '[::1]:8081' },\n"
    "  },\n"
    "  upstreams = {\n"
    "    app = {\n"
    "      targets = { '127.0.0.1:9001', { address = '127.0.0.1:9002', weight = 3 } },\n"
    "      balance = 'round_robin',\n"
    "      keepalive = 16, keepalive_timeout = 2.5, keepalive_requests = 50,\n"
    "    },\n"
    "  },\n"
    "  routes = {\n"
    "    { match = { host = 'API.Example.com', prefix = '/api' }, upstream = 'app',\n"
    "      strip_prefix = true },\n"
    "    { match = { host = '*.example.org' }, upstream = 'app' },\n"
    "    { upstream = 'app' },\n"
    "  },\n"
    "  timeouts = { connect = 1.5, read = 2, send = 3, client_header = 4, client_body = 5,\n"
    "               keepalive = 6, drain = 0.25 },\n"
    "  limits = { max_header_size = 8192, max_uri_size = 2048, max_body_size = 0,\n"
    "             max_headers = 50 },\n"
    "  log = { access = '/var/log/lp/access.log', format = '$status $uri', level = 'debug' },\n"
    "}\n";

static void test_full_config(void)
{
    char path[64], err[512];
    lp_config_t *c = NULL;
    int rc = load_text(full_config, &c, path, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0))
        fprintf(stderr, "  %s\n", err);
    REQUIRE(c != NULL);
    CHECK_STR(c->path, path);
    CHECK_EQ_INT(c->workers, 3);

    REQUIRE_EQ_INT(c->nlisten, 2);
    CHECK_STR(c->listen[0].addr.text, "127.0.0.1:8080");
    CHECK_EQ_INT(c->listen[0].backlog, 100);
    CHECK_EQ_INT(c->listen[0].addr.addr.ss_family, AF_INET);
    CHECK_EQ_INT(ntohs(((struct sockaddr_in *)&c->listen[0].addr.addr)->sin_port), 8080);
    CHECK_STR(c->listen[1].addr.text, "[::1]:8081");
    CHECK_EQ_INT(c->listen[1].addr.addr.ss_family, AF_INET6);
    CHECK_EQ_INT(c->listen[1].backlog, 511);

    REQUIRE_EQ_INT(c->nupstreams, 1);
    lp_upstream_conf_t *u = &c->upstreams[0];
    CHECK_STR(u->name, "app");
    REQUIRE_EQ_INT(u->ntargets, 2);
    CHECK_STR(u->targets[0].addr.text, "127.0.0.1:9001");
    CHECK_EQ_INT(u->targets[0].weight, 1);
    CHECK_STR(u->targets[1].addr.text, "127.0.0.1:9002");
    CHECK_EQ_INT(u->targets[1].weight, 3);
    CHECK_STR(u->balance, "round_robin");
    CHECK_EQ_INT(u->keepalive, 16);
    CHECK_EQ_INT(u->keepalive_timeout, 2500);
    CHECK_EQ_INT(u->keepalive_requests, 50);

    REQUIRE_EQ_INT(c->nroutes, 3);
    CHECK_STR(c->routes[0].host, "api.example.com"); /* lower-cased */
    CHECK_STR(c->routes[0].prefix, "/api");
    CHECK_EQ_INT(c->routes[0].prefix_len, 4);
    CHECK_EQ_INT(c->routes[0].strip_prefix, 1);
    CHECK_EQ_INT(c->routes[0].upstream, 0);
    CHECK_STR(c->routes[1].host, "*.example.org");
    CHECK_STR(c->routes[1].prefix, "/");
    CHECK_EQ_INT(c->routes[1].strip_prefix, 0);
    CHECK(c->routes[2].host == NULL);
    CHECK_STR(c->routes[2].prefix, "/");
    CHECK_EQ_INT(c->routes[2].prefix_len, 1);

    CHECK_EQ_INT(c->timeouts.connect, 1500);
    CHECK_EQ_INT(c->timeouts.read, 2000);
    CHECK_EQ_INT(c->timeouts.send, 3000);
    CHECK_EQ_INT(c->timeouts.client_header, 4000);
    CHECK_EQ_INT(c->timeouts.client_body, 5000);
    CHECK_EQ_INT(c->timeouts.keepalive, 6000);
    CHECK_EQ_INT(c->timeouts.drain, 250);

    CHECK_EQ_INT(c->limits.max_header_size, 8192);
    CHECK_EQ_INT(c->limits.max_uri_size, 2048);
    CHECK_EQ_INT(c->limits.max_body_size, 0);
    CHECK_EQ_INT(c->limits.max_headers, 50);

    CHECK_STR(c->access_log, "/var/log/lp/access.log");
    CHECK_STR(c->access_format.text, "$status $uri");
    CHECK_EQ_INT(c->log_level, LP_LOG_DEBUG);
    lp_config_free(c);
}

static void test_defaults(void)
{
    char path[64], err[512];
    lp_config_t *c = NULL;
    int rc = load_text(MINIMAL(""), &c, path, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0))
        fprintf(stderr, "  %s\n", err);
    REQUIRE(c != NULL);
    unsigned cpus = uv_available_parallelism();
    CHECK_EQ_INT(c->workers, cpus ? cpus : 1);
    CHECK_EQ_INT(c->listen[0].backlog, 511);

    CHECK_EQ_INT(c->timeouts.connect, 5000);
    CHECK_EQ_INT(c->timeouts.read, 60000);
    CHECK_EQ_INT(c->timeouts.send, 60000);
    CHECK_EQ_INT(c->timeouts.client_header, 10000);
    CHECK_EQ_INT(c->timeouts.client_body, 60000);
    CHECK_EQ_INT(c->timeouts.keepalive, 75000);
    CHECK_EQ_INT(c->timeouts.drain, 30000);

    CHECK_EQ_INT(c->limits.max_header_size, 16384);
    CHECK_EQ_INT(c->limits.max_uri_size, 8192);
    CHECK_EQ_INT(c->limits.max_body_size, 1048576);
    CHECK_EQ_INT(c->limits.max_headers, 100);

    REQUIRE_EQ_INT(c->nupstreams, 1);
    CHECK_EQ_INT(c->upstreams[0].keepalive, 128);
    CHECK_EQ_INT(c->upstreams[0].keepalive_timeout, 60000);
    CHECK_EQ_INT(c->upstreams[0].keepalive_requests, 1000);
    CHECK_EQ_INT(c->upstreams[0].targets[0].weight, 1);

    CHECK_STR(c->access_log, "-");
    CHECK_STR(c->access_format.text, LP_ACCESS_FORMAT_DEFAULT);
    CHECK_EQ_INT(c->log_level, LP_LOG_INFO);
    lp_config_free(c);
}

static void test_access_log_off(void)
{
    char path[64], err[512];
    lp_config_t *c = NULL;
    int rc = load_text(MINIMAL("  log = { access = false },\n"), &c, path, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0))
        fprintf(stderr, "  %s\n", err);
    REQUIRE(c != NULL);
    CHECK(c->access_log == NULL);
    CHECK_STR(c->access_format.text, LP_ACCESS_FORMAT_DEFAULT);
    lp_config_free(c);

    rc = load_text(MINIMAL("  log = { access = '-' },\n"), &c, path, err, sizeof(err));
    CHECK_EQ_INT(rc, 0);
    REQUIRE(c != NULL);
    CHECK_STR(c->access_log, "-");
    lp_config_free(c);
}

/* log.json: members sorted by name (a Lua table has no order); true: the default set. */
static void test_access_log_json(void)
{
    char path[64], err[512];
    lp_config_t *c = NULL;
    int rc = load_text(MINIMAL("  log = { json = { zeta = '$status', a = 'x $uri', "
                               "['m\\\"q'] = '$http_user_agent' } },\n"),
                       &c, path, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0))
        fprintf(stderr, "  %s\n", err);
    REQUIRE(c != NULL);
    REQUIRE_EQ_INT(c->access_format.njson, 3);
    CHECK_STR(c->access_format.json[0].name, "a");
    CHECK_STR(c->access_format.json[0].value, "x $uri");
    CHECK_STR(c->access_format.json[1].name, "m\"q");
    CHECK_STR(c->access_format.json[1].value, "$http_user_agent");
    CHECK_STR(c->access_format.json[2].name, "zeta");
    CHECK_STR(c->access_format.json[2].value, "$status");
    lp_config_free(c);

    rc = load_text(MINIMAL("  log = { json = true },\n"), &c, path, err, sizeof(err));
    CHECK_EQ_INT(rc, 0);
    REQUIRE(c != NULL);
    CHECK_EQ_INT(c->access_format.njson, 14);
    for (size_t i = 1; i < c->access_format.njson; i++)
        CHECK(strcmp(c->access_format.json[i - 1].name, c->access_format.json[i].name) < 0);
    CHECK(lp_accesslog_check_format(&c->access_format, err, sizeof(err)) == 0);
    lp_config_free(c);

    rc = load_text(MINIMAL("  log = { json = false },\n"), &c, path, err, sizeof(err));
    CHECK_EQ_INT(rc, 0);
    REQUIRE(c != NULL);
    CHECK(c->access_format.json == NULL);
    lp_config_free(c);
}

static void test_health_and_upstream_defaults(void)
{
    char path[64], err[512];
    lp_config_t *c = NULL;
    int rc = load_text(
        "return { listen = { { address = ':8080' } },\n"
        "  upstreams = { app = { targets = { 'http://127.0.0.1', 'http://127.0.0.1:81/' },\n"
        "    balance = 'hash', hash_on = 'cookie:sid', retry_on = { 502, 503 },\n"
        "    health = { active = { type = 'tcp' }, passive = { failures = 0 } } } },\n"
        "  routes = { { upstream = 'app' } } }\n",
        &c, path, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0))
        fprintf(stderr, "  %s\n", err);
    REQUIRE(c != NULL);
    const lp_upstream_conf_t *u = &c->upstreams[0];
    CHECK_STR(u->targets[0].addr.text, "127.0.0.1:80");
    CHECK_STR(u->targets[1].addr.text, "127.0.0.1:81");
    CHECK_EQ_INT(u->targets[0].https, 0);
    CHECK_STR(u->balance, "hash");
    CHECK_EQ_INT(u->hash_on, LP_HASH_COOKIE);
    CHECK_STR(u->hash_name, "sid");
    CHECK(lp_status_in(&u->retry_on, 502) && lp_status_in(&u->retry_on, 503));
    CHECK(!lp_status_in(&u->retry_on, 504));
    CHECK_EQ_INT(u->health.active, 1);
    CHECK_EQ_INT(u->health.active_http, 0);
    CHECK_STR(u->health.path, "/");
    CHECK_EQ_INT(u->health.interval, 5000);
    CHECK(lp_status_in(&u->health.active_statuses, 200));
    CHECK(lp_status_in(&u->health.active_statuses, 399));
    CHECK(!lp_status_in(&u->health.active_statuses, 400));
    CHECK_EQ_INT(u->health.passive_failures, 0);
    CHECK_EQ_INT(u->health.ejection, 10000);
    CHECK_EQ_INT(u->retries, 2);
    CHECK_EQ_INT(u->dns_ttl, 30000);
    CHECK_EQ_INT(u->pending_timeout, 5000);
    CHECK(u->tls == NULL);
    lp_config_free(c);
}

/* The JSON for GET /config and, with Lua, the table the workers' VMs decode come from the
 * one evaluation. */
static void test_json_and_lua_config(void)
{
    char path[64], err[512];
    lp_config_t *c = NULL;
    int rc = load_text(MINIMAL("  admin = { address = '127.0.0.1:9901' },\n"
                               "  pid_file = '/tmp/x.pid',\n"),
                       &c, path, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0))
        fprintf(stderr, "  %s\n", err);
    REQUIRE(c != NULL);
    REQUIRE(c->json != NULL);
    CHECK_CONTAINS(c->json, "\"admin\":{\"address\":\"127.0.0.1:9901\"}");
    CHECK(c->lua_config == NULL); /* no Lua: no VM to feed */
    CHECK_STR(c->admin.text, "127.0.0.1:9901");
    lp_config_free(c);

    rc = load_text("local secret_word = 'hunter2'\n"
                   "return { listen = { { address = ':8080' } },\n"
                   "  routes = { { handler = function(req) return secret_word end,\n"
                   "               password = 'x' } } }\n",
                   &c, path, err, sizeof(err));
    CHECK_EQ_INT(rc, LP_ECONFIG); /* routes[1].password: unknown field */
    CHECK_CONTAINS(err, "routes[1].password: unknown field");
    /* the line the key is written on (lua/luaproxy/config_line.lua) */
    char want[600];
    snprintf(want, sizeof(want), "%s:4: routes[1].password", path);
    CHECK_CONTAINS(err, want);
    rc = load_text("local secret_word = 'hunter2'\n"
                   "return { listen = { { address = ':8080' } },\n"
                   "  routes = { { handler = function(req) return secret_word end } } }\n",
                   &c, path, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0))
        fprintf(stderr, "  %s\n", err);
    REQUIRE(c != NULL);
    CHECK(c->has_lua);
    CHECK(c->lua_config != NULL && c->lua_config_len > 0);
    CHECK_CONTAINS(c->json, "\"handler\":\"<function>\"");
    lp_config_free(c);
}

typedef struct {
    const char *name;
    const char *text;
    const char *want[3]; /* substrings the message must contain (besides the path) */
} bad_t;

static const bad_t bad_configs[] = {
    {"unknown top key", MINIMAL("  foo = 1,\n"), {"foo: unknown field"}},
    {"listen missing",
     "return { upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"listen", "required"}},
    {"listen empty",
     "return { listen = {}, upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"listen", "at least one listener"}},
    {"listen address bad",
     "return { listen = { { address = 'nohost' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"listen[1].address", "nohost"}},
    {"listen second address bad port",
     "return { listen = { { address = ':80' }, { address = '1.2.3.4:99999' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"listen[2].address", "invalid port"}},
    {"listen address missing",
     "return { listen = { { backlog = 5 } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"listen[1].address", "required"}},
    {"listen unknown key",
     "return { listen = { { address = ':80', port = 1 } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"listen[1].port: unknown field"}},
    {"target weight not a number",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1', { address = '127.0.0.1:2',\n"
     "    weight = 'heavy' } } } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"upstreams.app.targets[2].weight", "expected an integer", "string"}},
    {"target weight zero",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { { address = '127.0.0.1:2', weight = 0 } } } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"upstreams.app.targets[1].weight", "below the minimum 1"}},
    {"targets missing",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { keepalive = 1 } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"upstreams.app.targets", "required"}},
    {"targets empty",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = {} } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"upstreams.app.targets", "at least one target"}},
    {"unknown balance",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' }, balance = 'random' } },\n"
     "  routes = { { upstream = 'app' } } }\n",
     {"upstreams.app.balance", "random"}},
    {"route to missing upstream",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'nope' } } }\n",
     {"routes[1].upstream", "no upstream named", "nope"}},
    {"route without upstream",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { match = { prefix = '/' } } } }\n",
     {"routes[1].upstream", "required"}},
    {"route prefix without slash",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { match = { prefix = 'api' }, upstream = 'app' } } }\n",
     {"routes[1].match.prefix", "must start with \"/\""}},
    {"route bad host",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'app' }, { match = { host = 'a b' }, upstream = 'app' } } }\n",
     {"routes[2].match.host"}},
    {"routes with a hole",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { [1] = { upstream = 'app' }, [3] = { upstream = 'app' } } }\n",
     {"routes"}},
    {"strip_prefix not boolean",
     "return { listen = { { address = ':8080' } },\n"
     "  upstreams = { app = { targets = { '127.0.0.1:1' } } },\n"
     "  routes = { { upstream = 'app', strip_prefix = 'yes' } } }\n",
     {"routes[1].strip_prefix", "boolean"}},
    {"timeouts.read negative",
     MINIMAL("  timeouts = { read = -1 },\n"),
     {"timeouts.read", "below the minimum"}},
    {"timeouts.connect zero", MINIMAL("  timeouts = { connect = 0 },\n"), {"timeouts.connect"}},
    {"timeouts unknown key",
     MINIMAL("  timeouts = { reed = 1 },\n"),
     {"timeouts.reed: unknown field"}},
    {"timeouts not a table",
     MINIMAL("  timeouts = 5,\n"),
     {"timeouts", "expected a record", "number"}},
    {"limits fractional",
     MINIMAL("  limits = { max_headers = 1.5 },\n"),
     {"limits.max_headers", "expected an integer", "1.5"}},
    {"limits too small",
     MINIMAL("  limits = { max_header_size = 10 },\n"),
     {"limits.max_header_size"}},
    {"workers zero", MINIMAL("  workers = 0,\n"), {"workers", "below the minimum 1"}},
    {"log.level unknown", MINIMAL("  log = { level = 'loud' },\n"), {"log.level", "loud"}},
    {"log.access true", MINIMAL("  log = { access = true },\n"), {"log.access"}},
    {"log.access empty", MINIMAL("  log = { access = '' },\n"), {"log.access"}},
    {"non-table", "return 42\n", {"(top)", "must return a table", "number"}},
    {"nothing returned", "local x = 1\n", {"(top)", "must return a table", "nil"}},
    {"runtime error", "error('boom')\n", {"boom"}},
};

static void check_bad(const bad_t *b, const char *text)
{
    char path[64], err[512];
    lp_config_t *c = (lp_config_t *)&c; /* must be set to NULL on failure */
    int rc = load_text(text, &c, path, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, LP_ECONFIG)) {
        fprintf(stderr, "  (%s) was accepted\n", b->name);
        if (rc == 0)
            lp_config_free(c);
        return;
    }
    CHECK(c == NULL);
    /* "path: key.path: problem" */
    if (!CHECK(strncmp(err, path, strlen(path)) == 0))
        fprintf(stderr, "  (%s) message does not start with the file: %s\n", b->name, err);
    for (int i = 0; i < 3 && b->want[i]; i++)
        if (!CHECK_CONTAINS(err, b->want[i]))
            fprintf(stderr, "  (%s)\n", b->name);
}

static void test_errors(void)
{
    for (size_t i = 0; i < LP_ARRAY_LEN(bad_configs); i++) {
        const bad_t *b = &bad_configs[i];
        check_bad(b, b->text);
    }
}

static void test_syntax_error(void)
{
    char path[64], err[512];
    lp_config_t *c = NULL;
    int rc = load_text("return {\n  listen = {\n    { address = ':80' ,, },\n  },\n}\n", &c, path,
                       err, sizeof(err));
    CHECK_EQ_INT(rc, LP_ECONFIG);
    CHECK(c == NULL);
    CHECK_CONTAINS(err, path);
    char line[96];
    snprintf(line, sizeof(line), "%s:3:", path); /* Lua's "file:line: message" */
    CHECK_CONTAINS(err, line);
}

static void test_missing_file(void)
{
    char err[512] = "";
    lp_config_t *c = NULL;
    CHECK_EQ_INT(lp_config_load("/nonexistent/lp.lua", &c, err, sizeof(err)), LP_ECONFIG);
    CHECK(c == NULL);
    CHECK_CONTAINS(err, "/nonexistent/lp.lua");
}

static void test_small_error_buffer(void)
{
    /* A message longer than the buffer is truncated, never overflowed (ASan checks). */
    char path[64], err[16];
    lp_config_t *c = NULL;
    CHECK_EQ_INT(load_text(MINIMAL("  foo = 1,\n"), &c, path, err, sizeof(err)), LP_ECONFIG);
    CHECK(c == NULL);
    CHECK(memchr(err, 0, sizeof(err)) != NULL);
}

static int port_of(const lp_addr_t *a)
{
    if (a->addr.ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)&a->addr)->sin_port);
    if (a->addr.ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)&a->addr)->sin6_port);
    return -1;
}

static void test_addr_parse(void)
{
    lp_addr_t a;
    char err[256];
    char ip[64];

    REQUIRE_EQ_INT(lp_addr_parse("127.0.0.1:80", &a, err, sizeof(err)), 0);
    CHECK_EQ_INT(a.addr.ss_family, AF_INET);
    CHECK_EQ_INT(a.addrlen, sizeof(struct sockaddr_in));
    CHECK_EQ_INT(port_of(&a), 80);
    inet_ntop(AF_INET, &((struct sockaddr_in *)&a.addr)->sin_addr, ip, sizeof(ip));
    CHECK_STR(ip, "127.0.0.1");
    CHECK_STR(a.text, "127.0.0.1:80");
    free(a.text);

    REQUIRE_EQ_INT(lp_addr_parse("[::1]:8080", &a, err, sizeof(err)), 0);
    CHECK_EQ_INT(a.addr.ss_family, AF_INET6);
    CHECK_EQ_INT(port_of(&a), 8080);
    inet_ntop(AF_INET6, &((struct sockaddr_in6 *)&a.addr)->sin6_addr, ip, sizeof(ip));
    CHECK_STR(ip, "::1");
    free(a.text);

    REQUIRE_EQ_INT(lp_addr_parse(":8080", &a, err, sizeof(err)), 0);
    CHECK_EQ_INT(a.addr.ss_family, AF_INET);
    CHECK_EQ_INT(port_of(&a), 8080);
    CHECK_EQ_INT(((struct sockaddr_in *)&a.addr)->sin_addr.s_addr, htonl(INADDR_ANY));
    free(a.text);

    REQUIRE_EQ_INT(lp_addr_parse("*:81", &a, err, sizeof(err)), 0);
    CHECK_EQ_INT(port_of(&a), 81);
    free(a.text);

    int rc = lp_addr_parse("localhost:9000", &a, err, sizeof(err));
    if (!CHECK_EQ_INT(rc, 0))
        fprintf(stderr, "  localhost: %s\n", err);
    if (rc == 0) {
        CHECK(a.addr.ss_family == AF_INET || a.addr.ss_family == AF_INET6);
        CHECK_EQ_INT(port_of(&a), 9000);
        free(a.text);
    }

    static const char *const bad[][2] = {
        {"nohost", "no :port"},         {"1.2.3.4:99999", "invalid port"},
        {"1.2.3.4:", "invalid port"},   {"1.2.3.4:80x", "invalid port"},
        {"1.2.3.4:-1", "invalid port"}, {"[::1]8080", "[ipv6]:port"},
        {"[::1", "[ipv6]:port"},
    };
    for (size_t i = 0; i < LP_ARRAY_LEN(bad); i++) {
        err[0] = 0;
        rc = lp_addr_parse(bad[i][0], &a, err, sizeof(err));
        if (!CHECK_EQ_INT(rc, LP_EINVAL)) {
            fprintf(stderr, "  \"%s\" accepted\n", bad[i][0]);
            if (rc == 0)
                free(a.text);
            continue;
        }
        CHECK(a.text == NULL);
        CHECK_CONTAINS(err, bad[i][1]);
    }
}

static const lp_test_case_t tests[] = {
    LP_TEST_ENTRY(test_full_config),
    LP_TEST_ENTRY(test_defaults),
    LP_TEST_ENTRY(test_access_log_off),
    LP_TEST_ENTRY(test_access_log_json),
    LP_TEST_ENTRY(test_errors),
    LP_TEST_ENTRY(test_health_and_upstream_defaults),
    LP_TEST_ENTRY(test_json_and_lua_config),
    LP_TEST_ENTRY(test_syntax_error),
    LP_TEST_ENTRY(test_missing_file),
    LP_TEST_ENTRY(test_small_error_buffer),
    LP_TEST_ENTRY(test_addr_parse),
};

LP_TEST_MAIN(tests)
