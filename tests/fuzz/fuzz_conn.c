/* libFuzzer target: one worker's real connection machinery (conn.c, request.c, upstream*.c,
 * endpoint.c, relay.c, http1.c, accesslog.c) on a libuv loop of its own, in this process,
 * driven by a script the fuzzer writes.
 *
 * The worker is set up as worker.c sets up its own (loop, buffer pools, deadline heap, one
 * generation with its upstreams attached, a listener, an access log), without a thread and
 * without Lua. Around it, plain non-blocking sockets play the two other parties:
 *   - clients: up to MAX_CLIENTS TCP connections to the worker's listener;
 *   - the origin: a listening socket on 127.0.0.1 that the config's upstreams name, whose
 *     accepted connections (up to MAX_ORIGINS) the script reads from and writes to. A second
 *     target is a port bound without listening: connecting to it is refused, so retries
 *     and passive health checks run.
 *
 * Built with FUZZ_CONN_LUA (the fuzz_conn_lua target), the config adds a global plugin
 * whose every phase does what the request's X-A header says ("request=sleep,log=error"):
 * sleep (yield), respond, error, read the body; a response_body filter rewrites bodies when
 * X-A names "filter". The worker then has a VM (made per input, as a generation's is).
 *
 * Time is virtual: this file defines clock_gettime, so libuv's clock (uv_now, uv_hrtime,
 * every deadline) and lp_health_now see the monotonic clocks only as the script advances
 * them, and a run does not depend on how fast the machine is. Each input starts at the same
 * instant; CLOCK_REALTIME (libFuzzer's own clock, log timestamps) is the real one.
 *
 * Script: a sequence of actions, one byte each (action = byte % NACT, selector = byte /
 * NACT picks the client or origin connection), some followed by operand bytes. After each
 * action the loop runs one non-blocking turn. Teardown closes every socket of the script,
 * closes what the worker still has as its shutdown does, and then requires: the loop ends
 * with no handle left (else abort), every read block came back to the pool, and the loop
 * closes; LeakSanitizer does the rest at the end of the input.
 *
 * Built with FUZZ_CONN_H2 (the fuzz_conn_h2 target, #17), the listener serves h2c by prior
 * knowledge beside HTTP/1.1 (listen[].http2) with small `http2` limits, and the client can
 * also write whole HTTP/2 frames (h2_texts: the preface, SETTINGS, HEADERS with and without
 * CONTINUATION, DATA, RST_STREAM, WINDOW_UPDATE, PING, PRIORITY, GOAWAY), so that every
 * frame goes through nghttp2's server session and h2.c's callbacks, the streams' requests
 * through conn.c's pipeline to the script's origin; virtual time reaches the idle and
 * send-stall timeouts (a SETTINGS with a window of 0 stalls every stream).
 *
 * Built with FUZZ_CONN_H2UP as well (the fuzz_conn_h2up target, #17), the upstreams speak
 * HTTP/2 (`protocol = "h2"`, h2c, max_streams = 2): the proxy's requests become streams of
 * nghttp2 client sessions (h2_up.c), and the origin can also write whole HTTP/2 frames as
 * the upstream's answer (h2up_texts: SETTINGS, response HEADERS, DATA, trailers, a
 * trailers-only gRPC answer, RST_STREAM, GOAWAY, WINDOW_UPDATE, PING, 1xx, a length that
 * lies), so that they go through nghttp2's client session and h2_up.c's callbacks, the
 * refused-stream retries, the read and grpc deadlines, and back to HTTP/1.1 and HTTP/2
 * clients. Raw bytes (o_write) and HTTP/1.1 texts reach the upstream's parser too.
 *
 * Seeds: make_corpus_conn.py writes corpus_conn/, corpus_conn_lua/, corpus_conn_h2/ and
 * corpus_conn_h2up/ (its action
 * and text numbers follow the tables below). FUZZ_CONN_TRACE=1 shows what a script does:
 *   FUZZ_CONN_TRACE=1 build-asan/tests/fuzz/fuzz_conn tests/fuzz/corpus_conn/keepalive */
#include <errno.h>
#include <signal.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include "accesslog.h"
#include "conn.h"
#include "cosock.h"
#include "h2.h"
#include "h2_mem.h"
#include "health.h"
#include "log.h"
#include "lua_vm.h"
#include "request.h"
#include "server.h"
#include "upstream.h"
#include "rtable.h"
#include "worker.h"

#define MAX_CLIENTS 4 /* one more than limits.max_connections: the refusal runs */
#define MAX_ORIGINS 4
#define MAX_STEPS   400
#define SMALL_BUF   (8 * 1024) /* small socket buffers: backpressure (see shrink_endpoint) */

/* ---- virtual monotonic time ---- */

#define VT_START_NS (1000000ull * 1000000000ull) /* an arbitrary instant, far from 0 */

static uint64_t vt_ns = VT_START_NS;

static int vt_clock(clockid_t id)
{
    return id == CLOCK_MONOTONIC || id == CLOCK_MONOTONIC_COARSE || id == CLOCK_MONOTONIC_RAW ||
           id == CLOCK_BOOTTIME;
}

/* Replaces libc's (and the sanitizer's interceptor, a weak alias) for the whole process. */
int clock_gettime(clockid_t id, struct timespec *ts);
int clock_gettime(clockid_t id, struct timespec *ts)
{
    if (!vt_clock(id))
        return (int)syscall(SYS_clock_gettime, id, ts);
    ts->tv_sec = (time_t)(vt_ns / 1000000000ull);
    ts->tv_nsec = (long)(vt_ns % 1000000000ull);
    return 0;
}

/* ---- the world: config and sockets that live for the process ---- */

/* FUZZ_CONN_TRACE set in the environment: the actions and what the parties read are shown,
 * with the engine's debug log (to check what a seed does). */
static int trace;

static lp_config_t *cfg;
static lp_gen_t gen;              /* the one generation (never freed: refs stay above 0) */
static lp_accesslog_t *accesslog; /* to /dev/null: the log line of every request is built */
static int proxy_fd = -1;         /* the worker's listening socket (dup'ed per input) */
static struct sockaddr_in proxy_sa;
static int origin_fd = -1;  /* the origin's listening socket */
static int refused_fd = -1; /* bound, never listening: connections to it are refused */
static char origin_addr[32], refused_addr[32];

static int listen_on_loopback(int do_listen, struct sockaddr_in *sa)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    memset(sa, 0, sizeof(*sa));
    sa->sin_family = AF_INET;
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(*sa);
    if (fd < 0 || bind(fd, (struct sockaddr *)sa, sizeof(*sa)) || (do_listen && listen(fd, 64)) ||
        getsockname(fd, (struct sockaddr *)sa, &len)) {
        perror("fuzz_conn: loopback socket");
        abort();
    }
    return fd;
}

/* A config with one route per upstream: "app" (the origin and the refused port, retries,
 * a connection limit with a short queue, a small keep-alive pool) and "solo" (the origin
 * alone, no retry, under /b/ with the prefix stripped); short timeouts and small limits,
 * so that the script reaches them. */
#ifdef FUZZ_CONN_LUA
/* The plugin: each phase acts as X-A says for it (`phase=action`, comma-separated). */
static const char plugin_src[] =
    "local P = { name = 'fuzz', priority = 1000 }\n"
    "local function act(req, phase)\n"
    "  local a = (req:header('x-a') or ''):match(phase .. '=(%a+)')\n"
    "  if a == 'sleep' then proxy.sleep(0.05)\n"
    "  elseif a == 'nap' then proxy.sleep(0.001)\n"
    "  elseif a == 'longsleep' then proxy.sleep(2)\n"
    "  elseif a == 'respond' then return req:respond(203, 'local answer', { ['x-l'] = '1' })\n"
    "  elseif a == 'error' then error('fuzz: ' .. phase .. ' fails')\n"
    "  elseif a == 'body' then local b = req:body(64); req.ctx.len = b and #b or -1\n"
    "  elseif a == 'target' then req:set_target('127.0.0.1', 1)\n"
    "  end\n"
    "end\n"
    "function P.request(req) act(req, 'request') end\n"
    "function P.upstream(req) act(req, 'upstream') end\n"
    "function P.response(req) req:set_resp_header('x-fuzz', tostring(req:status()))\n"
    "  act(req, 'response') end\n"
    "function P.response_body(req, chunk, eof)\n"
    "  if chunk and (req:header('x-a') or ''):find('filter', 1, true) then\n"
    "    return chunk:upper() .. (eof and '!' or '') end\n"
    "  return chunk\n"
    "end\n"
    "function P.log(req) act(req, 'log') end\n"
    "return P\n";
#define PLUGINS_KEY "  plugins = { { name = 'fuzz' } }, lua = { phase_timeout = 0 },\n"
#else
#define PLUGINS_KEY ""
#endif

/* Built with FUZZ_CONN_PROXY (the fuzz_conn_proxy target), the listener takes a PROXY
 * protocol header first and believes X-Forwarded-For from 127.0.0.0/8: inputs without a
 * header are closed at once, client_texts gains headers (whole, split, malformed) and
 * requests with forwarding headers. */
#ifdef FUZZ_CONN_PROXY
#define LISTEN_KEYS ", proxy_protocol = true, real_ip = { trusted = { '127.0.0.0/8', '::1' } }"
#elif defined(FUZZ_CONN_H2)
#define LISTEN_KEYS ", http2 = true"
#else
#define LISTEN_KEYS ""
#endif
#ifdef FUZZ_CONN_H2UP
#ifndef FUZZ_CONN_H2
#error "FUZZ_CONN_H2UP builds on FUZZ_CONN_H2"
#endif
#define UPSTREAM_KEYS ", protocol = 'h2', max_streams = 2"
#else
#define UPSTREAM_KEYS ""
#endif
#ifdef FUZZ_CONN_H2
/* Limits small enough for a script to reach (the window: backpressure on request bodies). */
#define HTTP2_KEY                                                                                  \
    "  http2 = { max_concurrent_streams = 4, initial_window_size = 1024, max_resets = 6,\n"        \
    "            max_control_frames = 12, max_continuations = 2, idle_timeout = 1,\n"              \
    "            max_requests = 6, max_header_list_size = 1024 },\n"
#else
#define HTTP2_KEY ""
#endif

static void write_config(const char *path)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        perror("fuzz_conn: config");
        abort();
    }
    fprintf(f,
            "return {\n"
            "  workers = 1,\n"
            "  listen = { { address = '127.0.0.1:0'" LISTEN_KEYS " } },\n"
            "  log = { level = 'error' },\n"
            "  upstreams = {\n"
            "    app = { targets = { '%s', '%s' }, retries = 2, retry_on = { 502, 503 },\n"
            "            max_connections = 2, max_pending = 1, pending_timeout = 0.3,\n"
            "            total_timeout = 3, keepalive = 2, keepalive_timeout = 0.5,\n"
            "            keepalive_requests = 3,\n"
            "            health = { passive = { failures = 3, ejection = 1 } }" UPSTREAM_KEYS
            " },\n"
            "    solo = { targets = { '%s' }, retries = 0, keepalive = 1" UPSTREAM_KEYS " },\n"
            "  },\n" HTTP2_KEY "  routes = {\n"
            "    { match = { prefix = '/b/' }, upstream = 'solo', strip_prefix = true },\n"
            "    { match = { prefix = '/' }, upstream = 'app' },\n"
            "  },\n"
            "  error_pages = { [502] = { body = 'bad gateway: ${detail}' } },\n" PLUGINS_KEY
            "  timeouts = { connect = 0.05, read = 0.4, send = 0.4, client_header = 0.2,\n"
            "               client_body = 0.3, keepalive = 1, drain = 1,\n"
            "               tunnel = 2 },\n"
            "  limits = { max_header_size = 512, max_uri_size = 128, max_body_size = 300000,\n"
            "             max_headers = 12, max_connections = 3 },\n"
            "}\n",
            origin_addr, refused_addr, origin_addr);
    fclose(f);
}

#ifdef FUZZ_CONN_LUA
/* The whole engine is linked (Lua's FFI calls lua_api.c's functions by name), and with it
 * the admin API and the file watch, which call these main.c functions: never reached. */
void lp_server_reload(lp_server_t *s, lp_reload_cb cb, void *data)
{
    abort();
}

void lp_server_reload_by(lp_server_t *s, const char *who, lp_reload_cb cb, void *data)
{
    abort();
}

void lp_server_stop(lp_server_t *s, const char *why)
{
    abort();
}

static char *plugin_path, *plugin_dir; /* owned: removed at exit */

static char *path_copy(const char *p)
{
    char *c = strdup(p);
    if (!c)
        abort();
    return c;
}

static void remove_plugin(void)
{
    unlink(plugin_path);
    char sub[128];
    snprintf(sub, sizeof(sub), "%s/plugins", plugin_dir);
    rmdir(sub);
    rmdir(plugin_dir);
    free(plugin_path);
    free(plugin_dir);
}
#endif

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct sockaddr_in sa;
    signal(SIGPIPE, SIG_IGN); /* as main.c: a write to a closed socket is an error, not death */
    proxy_fd = listen_on_loopback(1, &proxy_sa);
    origin_fd = listen_on_loopback(1, &sa);
    snprintf(origin_addr, sizeof(origin_addr), "127.0.0.1:%d", ntohs(sa.sin_port));
    refused_fd = listen_on_loopback(0, &sa);
    snprintf(refused_addr, sizeof(refused_addr), "127.0.0.1:%d", ntohs(sa.sin_port));

    static char dir[] = "/tmp/fuzz_conn.XXXXXX";
    if (!mkdtemp(dir)) {
        perror("fuzz_conn: mkdtemp");
        abort();
    }
    char path[96];
#ifdef FUZZ_CONN_LUA
    /* plugins/ next to the config: every input's VM loads it from there. */
    snprintf(path, sizeof(path), "%s/plugins", dir);
    mkdir(path, 0700);
    snprintf(path, sizeof(path), "%s/plugins/fuzz.lua", dir);
    FILE *pf = fopen(path, "w");
    if (!pf || fputs(plugin_src, pf) < 0 || fclose(pf)) {
        perror("fuzz_conn: plugin");
        abort();
    }
    plugin_path = path_copy(path);
    plugin_dir = path_copy(dir);
    atexit(remove_plugin);
#endif
    snprintf(path, sizeof(path), "%s/lp.lua", dir);
    write_config(path);
    char err[512];
    /* Both of main.c's steps: the materialising one resolves the targets' addresses (without
     * it every upstream connect failed with EINVAL and no script reached the origin). */
    if (lp_config_load(path, &cfg, err, sizeof(err)) ||
        lp_config_materialise(cfg, err, sizeof(err))) {
        fprintf(stderr, "fuzz_conn: %s\n", err);
        abort();
    }
    unlink(path);
#ifndef FUZZ_CONN_LUA
    rmdir(dir);
#endif
    trace = getenv("FUZZ_CONN_TRACE") != NULL;
    lp_log_level = trace ? LP_LOG_DEBUG : LP_LOG_ERROR;
    gen.id = 1;
    gen.config = cfg;
    static lp_bound_t bound = {.id = 1}; /* the listener below serves slot 1 */
    gen.bound = &bound;
    gen.refs = 1; /* ours: the worker generations below never drop the last one */
    if (!(accesslog = lp_accesslog_open("/dev/null", &cfg->access_format, err, sizeof(err)))) {
        fprintf(stderr, "fuzz_conn: access log: %s\n", err);
        abort();
    }
    return 0;
}

/* ---- the script ---- */

typedef struct {
    const uint8_t *p;
    size_t n;
} input_t;

static int next(input_t *in)
{
    if (!in->n)
        return -1;
    in->n--;
    return *in->p++;
}

/* Requests, pieces of requests and bodies the fuzzer can write in one step. */
static const char *const client_texts[] = {
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /b/x HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 10\r\n\r\n0123456789",
    "POST /b/ HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HEAD / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "PUT / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    "GET / HTTP/1.0\r\n\r\n",
    "GET /b/ HTTP/1.1\r\nHost: a\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "hello",
    "5\r\nhello\r\n",
    "0\r\n\r\n",
    "POST /b/y?q=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
    "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
#ifdef FUZZ_CONN_LUA
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: request=sleep\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: request=respond\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: "
    "request=sleep,upstream=sleep,response=sleep,log=sleep\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nX-A: request=body\r\nContent-Length: 10\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: upstream=respond,filter\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: request=error\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: response=error\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: filter,log=longsleep\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: request=longsleep\r\n\r\n",
    "GET / HTTP/1.1\r\nHost: a\r\nX-A: upstream=target\r\n\r\n",
    "POST / HTTP/1.1\r\nHost: a\r\nX-A: request=nap,upstream=nap\r\nTransfer-Encoding: "
    "chunked\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: a\r\nX-A: response=sleep\r\nConnection: Upgrade\r\nUpgrade: "
    "websocket\r\n\r\n",
#endif
#ifdef FUZZ_CONN_PROXY
    "PROXY TCP4 192.0.2.1 10.0.0.1 1000 80\r\n",
    "PROXY TCP6 2001:db8::1 ::1 1 2\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "PROXY UNKNOWN\r\n",
    ("PROXY TCP4 127.0.0.9 10.0.0.1 1000 80\r\nGET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: "
     "1.1.1.1, 127.0.0.2\r\n\r\n"),
    "PROXY TCP4 192.0.2.1 10.0",
    /* v2 headers hold NUL bytes, which these strlen()'d texts cannot: the raw writes
     * (c_write) reach them, libFuzzer's memcmp hooks finding the signature. */
    "GET / HTTP/1.1\r\nHost: a\r\nX-Forwarded-For: garbage, fe80::1%eth0\r\n\r\n",
#endif
};

#ifdef FUZZ_CONN_H2
/* HTTP/2 frames (NUL bytes: lengths given); HPACK: static table indexes (0x82 GET, 0x83
 * POST, 0x84 "/", 0x86 http) and literals (0x04 :path, 0x41 :authority). */
#define BLOB(s)                                                                                    \
    {                                                                                              \
        s, sizeof(s) - 1                                                                           \
    }
static const struct {
    const char *p;
    size_t n;
} h2_texts[] = {
    /* 0: the preface and an empty SETTINGS */
    BLOB("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
    /* 1: SETTINGS ACK */
    BLOB("\x00\x00\x00\x04\x01\x00\x00\x00\x00"),
    /* 2: HEADERS 1 GET / (END_STREAM, END_HEADERS) */
    BLOB("\x00\x00\x06\x01\x05\x00\x00\x00\x01\x82\x86\x84\x41\x01\x61"),
    /* 3: HEADERS 3 POST /b/ (a body follows) */
    BLOB("\x00\x00\x0a\x01\x04\x00\x00\x00\x03\x83\x86\x04\x03/b/\x41\x01\x61"),
    /* 4: DATA 3 "hello" */
    BLOB("\x00\x00\x05\x00\x00\x00\x00\x00\x03hello"),
    /* 5: DATA 3 "hello" END_STREAM */
    BLOB("\x00\x00\x05\x00\x01\x00\x00\x00\x03hello"),
    /* 6: RST_STREAM 1 CANCEL */
    BLOB("\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x08"),
    /* 7: WINDOW_UPDATE connection +1 MiB */
    BLOB("\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x10\x00\x00"),
    /* 8: WINDOW_UPDATE 1 +64 KiB */
    BLOB("\x00\x00\x04\x08\x00\x00\x00\x00\x01\x00\x01\x00\x00"),
    /* 9: SETTINGS INITIAL_WINDOW_SIZE 0: every stream stalls */
    BLOB("\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00"),
    /* 10: PING */
    BLOB("\x00\x00\x08\x06\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08"),
    /* 11: GOAWAY NO_ERROR */
    BLOB("\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
    /* 12: HEADERS 5 GET (END_STREAM), then CONTINUATION 5 with the rest (END_HEADERS) */
    BLOB("\x00\x00\x02\x01\x01\x00\x00\x00\x05\x82\x86"
         "\x00\x00\x04\x09\x04\x00\x00\x00\x05\x84\x41\x01\x61"),
    /* 13: HEADERS 7 GET / */
    BLOB("\x00\x00\x06\x01\x05\x00\x00\x00\x07\x82\x86\x84\x41\x01\x61"),
    /* 14: PRIORITY 9 */
    BLOB("\x00\x00\x05\x02\x00\x00\x00\x00\x09\x00\x00\x00\x01\x10"),
    /* 15: SETTINGS INITIAL_WINDOW_SIZE 65535: the streams' windows open again */
    BLOB("\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x00\xff\xff"),
};
#define NH2 (sizeof(h2_texts) / sizeof(h2_texts[0]))
#else
#define NH2 0
#endif

static const char *const origin_texts[] = {
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    "HTTP/1.1 100 Continue\r\n\r\n",
    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "HTTP/1.1 204 No Content\r\n\r\n",
    "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n",
    "HTTP/1.0 200 OK\r\n\r\nclose-delimited",
    "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello",
    "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
    "5\r\nhello\r\n",
    "0\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 400000\r\n\r\n",
    "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
    "HTTP/1.1 503 Busy\r\nConnection: keep-alive\r\nContent-Length: 4\r\n\r\nbusy",
};

#define NTEXTS(a) (sizeof(a) / sizeof((a)[0]))

#ifdef FUZZ_CONN_H2UP
/* HTTP/2 frames an upstream answers with (the proxy's streams are 1, 3, 5...); HPACK: 0x88
 * :status 200, 0x89 204, literals with indexed names (0x0f 0x10 content-type, 0x0f 0x0d
 * content-length, 0x08 :status) and new names (grpc-status). */
static const struct {
    const char *p;
    size_t n;
} h2up_texts[] = {
    /* 0: SETTINGS (the server preface) */
    BLOB("\x00\x00\x00\x04\x00\x00\x00\x00\x00"),
    /* 1: SETTINGS ACK */
    BLOB("\x00\x00\x00\x04\x01\x00\x00\x00\x00"),
    /* 2: HEADERS 1 :status 200 */
    BLOB("\x00\x00\x01\x01\x04\x00\x00\x00\x01\x88"),
    /* 3: DATA 1 "hello" END_STREAM */
    BLOB("\x00\x00\x05\x00\x01\x00\x00\x00\x01hello"),
    /* 4: DATA 1 "hello" */
    BLOB("\x00\x00\x05\x00\x00\x00\x00\x00\x01hello"),
    /* 5: HEADERS 1 trailers grpc-status: 0 (END_STREAM) */
    BLOB("\x00\x00\x0f\x01\x05\x00\x00\x00\x01\x00\x0bgrpc-status\x01"
         "0"),
    /* 6: HEADERS 1 trailers-only: 200, application/grpc, grpc-status 14 (END_STREAM) */
    BLOB("\x00\x00\x24\x01\x05\x00\x00\x00\x01\x88\x0f\x10\x10"
         "application/grpc\x00\x0bgrpc-status\x02"
         "14"),
    /* 7: RST_STREAM 1 INTERNAL_ERROR */
    BLOB("\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x02"),
    /* 8: RST_STREAM 1 REFUSED_STREAM */
    BLOB("\x00\x00\x04\x03\x00\x00\x00\x00\x01\x00\x00\x00\x07"),
    /* 9: GOAWAY last stream 0 (every stream refused) */
    BLOB("\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"),
    /* 10: GOAWAY last stream 1 */
    BLOB("\x00\x00\x08\x07\x00\x00\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x00"),
    /* 11: HEADERS 3 :status 200, DATA 3 "hi" END_STREAM */
    BLOB("\x00\x00\x01\x01\x04\x00\x00\x00\x03\x88"
         "\x00\x00\x02\x00\x01\x00\x00\x00\x03hi"),
    /* 12: SETTINGS MAX_CONCURRENT_STREAMS 1 */
    BLOB("\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x03\x00\x00\x00\x01"),
    /* 13: WINDOW_UPDATE connection +1 MiB */
    BLOB("\x00\x00\x04\x08\x00\x00\x00\x00\x00\x00\x10\x00\x00"),
    /* 14: PING */
    BLOB("\x00\x00\x08\x06\x00\x00\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08"),
    /* 15: HEADERS 1 :status 204 (END_STREAM) */
    BLOB("\x00\x00\x01\x01\x05\x00\x00\x00\x01\x89"),
    /* 16: HEADERS 1 200 content-length: 5, then DATA 1 "hi" END_STREAM (it lied) */
    BLOB("\x00\x00\x05\x01\x04\x00\x00\x00\x01\x88\x0f\x0d\x01"
         "5"
         "\x00\x00\x02\x00\x01\x00\x00\x00\x01hi"),
    /* 17: HEADERS 1 :status 100 (interim) */
    BLOB("\x00\x00\x05\x01\x04\x00\x00\x00\x01\x08\x03"
         "100"),
    /* 18: SETTINGS INITIAL_WINDOW_SIZE 0: the request bodies wait */
    BLOB("\x00\x00\x06\x04\x00\x00\x00\x00\x00\x00\x04\x00\x00\x00\x00"),
    /* 19: HEADERS 5 :status 200 (END_STREAM) */
    BLOB("\x00\x00\x01\x01\x05\x00\x00\x00\x05\x88"),
};
#define NH2UP (sizeof(h2up_texts) / sizeof(h2up_texts[0]))
#else
#define NH2UP 0
#endif

enum {
    A_CONNECT,  /* a new client connection, if a slot is free */
    A_C_WRITE,  /* client writes n (operand) bytes taken from the input */
    A_C_TEXT,   /* client writes one of client_texts (operand) */
    A_C_BULK,   /* client writes (operand % 64 + 1) KiB of filler */
    A_C_SHUT,   /* client half-closes (SHUT_WR) */
    A_C_CLOSE,  /* client closes */
    A_C_RESET,  /* client closes with RST */
    A_C_READ,   /* client reads what is there */
    A_O_ACCEPT, /* origin accepts a connection the proxy made */
    A_O_READ,   /* origin reads what is there */
    A_O_WRITE,  /* origin writes n (operand) bytes taken from the input */
    A_O_TEXT,   /* origin writes one of origin_texts (operand) */
    A_O_BULK,   /* origin writes (operand % 64 + 1) KiB of filler */
    A_O_SHUT,   /* origin half-closes */
    A_O_CLOSE,  /* origin closes */
    A_O_RESET,  /* origin closes with RST */
    A_TIME,     /* virtual time moves on (operand picks how far) */
    A_RUN,      /* a few more loop turns */
    NACT
};

static const char *const act_names[NACT] = {
    "connect", "c_write", "c_text", "c_bulk", "c_shut", "c_close", "c_reset", "c_read", "o_accept",
    "o_read",  "o_write", "o_text", "o_bulk", "o_shut", "o_close", "o_reset", "time",   "run"};

static const uint64_t time_steps_ms[] = {1, 10, 40, 60, 110, 210, 310, 410, 510, 1100, 3100, 20000};

typedef struct {
    lp_worker_t w;
    lp_listener_t l;
    int client[MAX_CLIENTS];
    int origin[MAX_ORIGINS];
} world_t;

/* The script's sockets take a bulk write whole, and read through a small window. */
static void set_small_buffers(int fd)
{
    int small = SMALL_BUF, big = 256 * 1024;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
}

/* An origin connection's socket. An HTTP/2 upstream's answer is several small frames (one
 * o_text each): Nagle's algorithm would hold each behind the proxy's delayed ACK of the one
 * before, 40 ms of real time that a script (virtual time) never waits, so the frames would
 * come only at teardown. */
static void set_origin_socket(int fd)
{
    set_small_buffers(fd);
#ifdef FUZZ_CONN_H2UP
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
#endif
}

/* The proxy's sockets get small kernel buffers too (setting them stops the kernel's
 * autotuning), so that its own write queues, and with them the backpressure paths and the
 * send timeouts, fill with a few hundred KiB rather than megabytes. */
static void shrink_endpoint(lp_endpoint_t *ep)
{
    uv_os_fd_t fd;
    int small = SMALL_BUF;
    if ((ep->flags & LP_EPF_CLOSING) || uv_fileno((uv_handle_t *)&ep->tcp, &fd))
        return;
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
}

static void shrink_proxy_sockets(lp_worker_t *w)
{
    for (lp_list_t *it = w->conns.next; it != &w->conns; it = it->next)
        shrink_endpoint(&LP_CONTAINER_OF(it, lp_conn_t, link)->ep);
    for (lp_list_t *it = w->peers.next; it != &w->peers; it = it->next)
        shrink_endpoint(&LP_CONTAINER_OF(it, lp_peer_t, all)->ep);
}

static void fd_close(int *fd, int reset)
{
    if (*fd < 0)
        return;
    if (reset) {
        struct linger lg = {1, 0};
        setsockopt(*fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    }
    close(*fd);
    *fd = -1;
}

static void fd_send(int fd, const void *data, size_t len)
{
    if (fd >= 0 && len)
        (void)!send(fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
}

static void fd_bulk(int fd, size_t kib)
{
    static char filler[64 * 1024];
    if (!filler[0])
        memset(filler, 'x', sizeof(filler));
    fd_send(fd, filler, kib * 1024 > sizeof(filler) ? sizeof(filler) : kib * 1024);
}

static void trace_bytes(const char *who, const char *p, ssize_t n)
{
    fprintf(stderr, "%s read %zd:", who, n);
    for (ssize_t i = 0; i < n && i < 160; i++)
        fputs(p[i] == '\r' ? "\\r" : p[i] == '\n' ? "\\n " : (char[]){p[i], 0}, stderr);
    fputs(n > 160 ? "...\n" : "\n", stderr);
}

static void fd_drain(int fd, const char *who)
{
    static char sink[64 * 1024];
    ssize_t n = -1;
    while (fd >= 0 && (n = recv(fd, sink, sizeof(sink), MSG_DONTWAIT)) > 0)
        if (trace)
            trace_bytes(who, sink, n);
    if (trace && fd >= 0 && n == 0)
        fprintf(stderr, "%s read: end of input\n", who);
}

static void client_connect(world_t *wd)
{
    for (int i = 0; i < MAX_CLIENTS; i++) {
        if (wd->client[i] >= 0)
            continue;
        int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0)
            return;
        set_small_buffers(fd);
        /* Blocking: on loopback the handshake completes against the backlog at once. */
        if (connect(fd, (struct sockaddr *)&proxy_sa, sizeof(proxy_sa))) {
            close(fd);
            return;
        }
        wd->client[i] = fd;
        return;
    }
}

static void origin_accept(world_t *wd)
{
    for (int i = 0; i < MAX_ORIGINS; i++) {
        if (wd->origin[i] >= 0)
            continue;
        int fd = accept4(origin_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd >= 0)
            set_origin_socket(fd);
        wd->origin[i] = fd;
        return;
    }
}

/* The origin connection a selector names; accepts one first when the slot is empty. */
static int *origin_sel(world_t *wd, int sel)
{
    int *fd = &wd->origin[sel % MAX_ORIGINS];
    if (*fd < 0) {
        *fd = accept4(origin_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (*fd >= 0)
            set_origin_socket(*fd);
    }
    return fd;
}

static void run_turns(world_t *wd, int n)
{
    for (int i = 0; i < n; i++) {
        uv_run(&wd->w.loop, UV_RUN_NOWAIT);
        shrink_proxy_sockets(&wd->w);
    }
}

static void run_script(world_t *wd, input_t *in)
{
    for (int step = 0; step < MAX_STEPS && in->n; step++) {
        int b = next(in);
        int act = b % NACT, sel = b / NACT;
        int *c = &wd->client[sel % MAX_CLIENTS];
        int op;
        if (trace)
            fprintf(stderr, "-- %s %d\n", act_names[act], sel);
        switch (act) {
        case A_CONNECT:
            client_connect(wd);
            break;
        case A_C_WRITE:
        case A_O_WRITE: {
            if ((op = next(in)) < 0)
                return;
            size_t len = (size_t)op < in->n ? (size_t)op : in->n;
            fd_send(act == A_C_WRITE ? *c : *origin_sel(wd, sel), in->p, len);
            in->p += len;
            in->n -= len;
            break;
        }
        case A_C_TEXT: {
            if ((op = next(in)) < 0)
                return;
            size_t t = (size_t)op % (NTEXTS(client_texts) + NH2);
#ifdef FUZZ_CONN_H2
            if (t >= NTEXTS(client_texts)) {
                fd_send(*c, h2_texts[t - NTEXTS(client_texts)].p,
                        h2_texts[t - NTEXTS(client_texts)].n);
                break;
            }
#endif
            fd_send(*c, client_texts[t], strlen(client_texts[t]));
            break;
        }
        case A_O_TEXT: {
            if ((op = next(in)) < 0)
                return;
            size_t ti = (size_t)op % (NTEXTS(origin_texts) + NH2UP);
#ifdef FUZZ_CONN_H2UP
            if (ti >= NTEXTS(origin_texts)) {
                fd_send(*origin_sel(wd, sel), h2up_texts[ti - NTEXTS(origin_texts)].p,
                        h2up_texts[ti - NTEXTS(origin_texts)].n);
                break;
            }
#endif
            const char *t = origin_texts[ti];
            fd_send(*origin_sel(wd, sel), t, strlen(t));
            break;
        }
        case A_C_BULK:
        case A_O_BULK:
            if ((op = next(in)) < 0)
                return;
            fd_bulk(act == A_C_BULK ? *c : *origin_sel(wd, sel), (size_t)(op % 64 + 1));
            break;
        case A_C_SHUT:
            if (*c >= 0)
                shutdown(*c, SHUT_WR);
            break;
        case A_C_CLOSE:
        case A_C_RESET:
            fd_close(c, act == A_C_RESET);
            break;
        case A_C_READ:
            fd_drain(*c, "client");
            break;
        case A_O_ACCEPT:
            origin_accept(wd);
            break;
        case A_O_READ:
            fd_drain(*origin_sel(wd, sel), "origin");
            break;
        case A_O_SHUT: {
            int *o = origin_sel(wd, sel);
            if (*o >= 0)
                shutdown(*o, SHUT_WR);
            break;
        }
        case A_O_CLOSE:
        case A_O_RESET:
            fd_close(origin_sel(wd, sel), act == A_O_RESET);
            break;
        case A_TIME:
            if ((op = next(in)) < 0)
                return;
            vt_ns += time_steps_ms[op % NTEXTS(time_steps_ms)] * 1000000ull;
            break;
        case A_RUN:
            run_turns(wd, sel % 4 + 1);
            break;
        }
        run_turns(wd, 1);
    }
}

/* ---- one worker, set up and torn down per input ---- */

static void on_turn_end(uv_prepare_t *p)
{
    lp_h2_flush_turn(p->data);
}

static void world_open(world_t *wd)
{
    memset(wd, 0, sizeof(*wd));
    for (int i = 0; i < MAX_CLIENTS; i++)
        wd->client[i] = -1;
    for (int i = 0; i < MAX_ORIGINS; i++)
        wd->origin[i] = -1;
    vt_ns = VT_START_NS;
    /* Passive health state is per address for the process: every input starts healthy. */
    const char *addrs[] = {origin_addr, refused_addr};
    for (int i = 0; i < 2; i++) {
        lp_health_t *h = lp_health_get(addrs[i]);
        h->consecutive_failures = h->ejections = 0;
        h->ejected_until = 0;
    }

    lp_worker_t *w = &wd->w;
    w->id = 1;
    lp_list_init(&w->conns);
    lp_list_init(&w->detached);
    lp_list_init(&w->peers);
    lp_bufpool_init(&w->bufs, 256);
    if (uv_loop_init(&w->loop))
        abort();
    lp_ep_env_init(&w->ep_env, &w->loop, &w->bufs, &w->wbatches);
    uv_idle_init(&w->loop, &w->hs_idle);
    w->hs_idle.data = w;
    /* The end of each loop turn, as worker.c's prepare: HTTP/2 output deferred to it. */
    lp_list_init(&w->h2_out);
    uv_prepare_init(&w->loop, &w->flush);
    w->flush.data = w;
    uv_prepare_start(&w->flush, on_turn_end);
    uv_unref((uv_handle_t *)&w->flush);
    lp_lua_sched_init(w);

    lp_wgen_t *g = calloc(1, sizeof(*g));
    lp_upstream_rt_t *ups = lp_upstream_rt_new(w, cfg);
    if (!g || !ups)
        abort();
    char err[512];
    if (lp_lua_open(w, cfg, ups, &g->lua, err, sizeof(err))) {
        fprintf(stderr, "fuzz_conn: lua: %s\n", err);
        abort();
    }
    if (lp_upstream_rt_attach(w, ups, cfg->nupstreams, gen.id))
        abort();
    g->id = gen.id;
    g->gen = &gen;
    g->config = cfg;
    g->upstreams = ups;
    g->rtable = cfg->rtable; /* the config's route table, as worker.c hands it over */
    lp_rtable_ref(g->rtable);
    g->refs = 1;
    __atomic_add_fetch(&gen.refs, 1, __ATOMIC_RELAXED);
    w->cur = g;
    w->config = cfg;
    w->access = accesslog;
    lp_lua_attach(g->lua, g);

    lp_listener_t *l = &wd->l;
    l->w = w;
    l->id = 1;
    l->proxy_protocol = cfg->listen[0].proxy_protocol;
    l->http2 = cfg->listen[0].http2;
    uv_tcp_init(&w->loop, &l->tcp);
    l->tcp.data = l;
    int fd = dup(proxy_fd);
    if (fd < 0 || uv_tcp_open(&l->tcp, fd) ||
        uv_listen((uv_stream_t *)&l->tcp, 64, lp_conn_on_connection))
        abort();
}

static void print_handle(uv_handle_t *h, void *arg)
{
    fprintf(stderr, "fuzz_conn: handle left: %s%s%s\n", uv_handle_type_name(h->type),
            uv_is_active(h) ? " active" : "", uv_is_closing(h) ? " closing" : "");
}

/* Every connection still waiting in a listening socket's backlog is dropped. */
static void drain_backlog(int lfd)
{
    int fd;
    while ((fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC)) >= 0)
        fd_close(&fd, 1);
}

/* No client connection and no upstream connection serving a request (idle pooled ones
 * may stay). */
static int worker_idle(lp_worker_t *w)
{
    if (!lp_list_empty(&w->conns))
        return 0;
    for (lp_list_t *it = w->peers.next; it != &w->peers; it = it->next)
        if (LP_CONTAINER_OF(it, lp_peer_t, all)->req)
            return 0;
    return 1;
}

static void world_close(world_t *wd)
{
    lp_worker_t *w = &wd->w;
    /* The script's parties leave first, with a reset: no socket of theirs stays in
     * TIME_WAIT (a long run makes hundreds of thousands of connections; the script closes
     * cleanly when it wants to). The clients go first, and the worker must then let go of
     * everything of theirs by itself, within its timeouts, while the origin stays silent
     * with its connections open: no client connection, no upstream connection serving a
     * request may be left (a request or tunnel that nothing would ever end). */
    for (int i = 0; i < MAX_CLIENTS; i++)
        fd_close(&wd->client[i], 1);
    for (int i = 0; i < 60 && !worker_idle(w); i++) {
        /* A little real time too: on a loaded machine the kernel may deliver the resets
         * late, and only a worker that never lets go may fail here. */
        struct pollfd pfd = {.fd = uv_backend_fd(&w->loop), .events = POLLIN};
        (void)poll(&pfd, 1, 2);
        vt_ns += 1000 * 1000000ull;
        run_turns(wd, 2);
    }
    if (!worker_idle(w)) {
        for (lp_list_t *it = w->conns.next; it != &w->conns; it = it->next) {
            lp_conn_t *c = LP_CONTAINER_OF(it, lp_conn_t, link);
            fprintf(stderr,
                    "fuzz_conn: client connection: flags 0x%x, endpoint flags 0x%x, timer %d "
                    "(due %s), %zu bytes queued, %s\n",
                    c->flags, c->ep.flags, c->ep.tmode, c->ep.deadline ? "set" : "none",
                    lp_ep_queued(&c->ep), c->req ? "a request" : "no request");
        }
        fprintf(stderr, "fuzz_conn: 60 s after the clients left, the worker still holds %s\n",
                lp_list_empty(&w->conns) ? "an upstream connection for a request"
                                         : "a client connection");
        abort();
    }
    for (int i = 0; i < MAX_ORIGINS; i++)
        fd_close(&wd->origin[i], 1);
    drain_backlog(origin_fd);
    run_turns(wd, 4);
    /* Then what worker.c's shutdown does: the listener closes, connections still open are
     * cut (the drain timeout), idle upstream connections close, the generation goes. */
    w->stopping = 1;
    uv_close((uv_handle_t *)&wd->l.tcp, NULL);
    lp_list_t *it = w->conns.next;
    while (it != &w->conns) {
        lp_list_t *nx = it->next;
        lp_conn_close(LP_CONTAINER_OF(it, lp_conn_t, link));
        it = nx;
    }
    lp_upstream_close_idle(w, 0);
    lp_cosock_worker_close(w);
    lp_lua_generation_ended(w->cur->lua);
    lp_lua_background_stop(w, 1);
    lp_req_end_detached(w, 1);
    lp_wgen_t *g = w->cur;
    w->cur = NULL;
    lp_wgen_release(w, g);
    lp_lua_sched_close(w);
    uv_close((uv_handle_t *)&w->hs_idle, NULL);
    uv_close((uv_handle_t *)&w->flush, NULL);
    free(w->hs_q);
    w->hs_q = NULL;
    lp_ep_timers_close(&w->ep_env.timers);
    for (int i = 0; i < 50 && uv_loop_alive(&w->loop); i++) {
        uv_run(&w->loop, UV_RUN_NOWAIT);
        vt_ns += 1000 * 1000000ull;
    }
    if (uv_loop_alive(&w->loop) || !lp_list_empty(&w->conns) || !lp_list_empty(&w->peers)) {
        uv_walk(&w->loop, print_handle, NULL);
        fprintf(stderr, "fuzz_conn: the worker did not wind down (conns %d, peers %d)\n",
                !lp_list_empty(&w->conns), !lp_list_empty(&w->peers));
        abort();
    }
    lp_accesslog_flush(w->access);
    lp_h2_pool_free(w->h2_pool);
    w->h2_pool = NULL;
    lp_upstream_destroy_all(w);
    lp_req_free_all(w);
    lp_wbpool_destroy(&w->wbatches);
    if (w->bufs.outstanding) {
        fprintf(stderr, "fuzz_conn: %zu read blocks never came back\n",
                (size_t)w->bufs.outstanding);
        abort();
    }
    lp_bufpool_destroy(&w->bufs);
    if (uv_loop_close(&w->loop)) {
        fprintf(stderr, "fuzz_conn: the loop does not close\n");
        abort();
    }
    drain_backlog(proxy_fd);
    drain_backlog(origin_fd);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static world_t wd;
    world_open(&wd);
    input_t in = {data, size};
    run_script(&wd, &in);
    world_close(&wd);
    return 0;
}
