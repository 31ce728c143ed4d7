"""Benchmark scenarios, as data.

A scenario is a dict:
  name         unique short name, used in tables and in results/latest.json
  path         URL path (with query) that wrk requests
  connections  wrk connection count
  luaproxy     luaproxy config template (a Lua file returning a table)
  nginx        nginx config template (a whole nginx.conf)
  per_mib      optional: also report CPU ms per MiB relayed (large bodies)
  note         optional: one line printed above the scenario's table
  wrk_setup    optional: Lua run by wrk before the reporting script (wrk.method, wrk.body)

Templates use {{key}} placeholders, filled by harness.render():
  {{port}}         the port the proxy under test listens on (127.0.0.1)
  {{origin_port}}  the port of the origin (lp_origin) on 127.0.0.1
  {{dir}}          a private temp directory for this proxy instance
  {{user}}         'user root;' when running as root, else '' (nginx only)
  {{nofile}}       open-file limit the proxies may use
Any other {{name}} is an error, so a typo fails loudly instead of silently.
Lua and nginx braces and nginx $variables pass through untouched.

Scenarios that share the same pair of templates run against the same pair of
proxy processes; a new pair of templates starts a fresh pair of processes.
To add a scenario (Lua plugins vs nginx+lua, TLS, balancing policies), add
templates below and entries to SCENARIOS; nothing else has to change.
"""

import json

# --- luaproxy: plain reverse proxy, 1 worker, access log off -----------------
LUAPROXY_PLAIN = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = { { match = { prefix = "/" }, upstream = "app" } },
  log = { access = false },
}
"""

# --- nginx: the peer, same shape: 1 worker, upstream keep-alive, access log off
# proxy_buffering is left on (nginx's default), as are nginx's other defaults.
# Both keep up to 512 idle upstream connections, so that upstream keep-alive holds at
# 256 client connections too (with 64, both proxies reconnect for most requests).
NGINX_PLAIN = """\
{{user}}
worker_processes 1;
worker_rlimit_nofile {{nofile}};
pid {{dir}}/nginx.pid;
error_log {{dir}}/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path {{dir}}/tmp/client_body;
  proxy_temp_path       {{dir}}/tmp/proxy;
  fastcgi_temp_path     {{dir}}/tmp/fastcgi;
  uwsgi_temp_path       {{dir}}/tmp/uwsgi;
  scgi_temp_path        {{dir}}/tmp/scgi;
  upstream o {
    server 127.0.0.1:{{origin_port}};
    keepalive 512;
  }
  server {
    listen 127.0.0.1:{{port}};
    location / {
      proxy_pass http://o;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
"""

BODIES = [
    # (label, path, per_mib)
    ("5B", "/", False),
    ("16KiB", "/fixed?size=16384", False),
    ("1MiB", "/fixed?size=1048576", True),
]

SCENARIOS = []
for _conns in (50, 256):
    for _label, _path, _per_mib in BODIES:
        SCENARIOS.append({
            "name": "plain-%s-c%d" % (_label, _conns),
            "path": _path,
            "connections": _conns,
            "luaproxy": LUAPROXY_PLAIN,
            "nginx": NGINX_PLAIN,
            "per_mib": _per_mib,
        })

# A new client connection per request: the cost of accept, connection set-up and teardown.
SCENARIOS.append({
    "name": "plain-close-5B-c50",
    "path": "/",
    "connections": 50,
    "headers": ["Connection: close"],
    "luaproxy": LUAPROXY_PLAIN,
    "nginx": NGINX_PLAIN,
    "per_mib": False,
    "note": "Connection: close: a new client connection per request",
})

# --- Lua: request_id + headers (one request, one response header) + router --------
# luaproxy runs its bundled plugins; nginx (libnginx-mod-http-lua, the OpenResty-style
# anchor) does the same work in access_by_lua_block / header_filter_by_lua_block.
LUAPROXY_LUA = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  plugins = {
    { name = "request_id" },
    { name = "router", rules = { { prefix = "/", upstream = "app" } } },
    { name = "headers", request = { set = { ["X-Env"] = "prod" } },
                        response = { set = { ["X-Served-By"] = "luaproxy" } } },
  },
  routes = { { match = { prefix = "/" } } },
  log = { access = false },
}
"""

NGINX_LUA = """\
{{user}}
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
worker_rlimit_nofile {{nofile}};
pid {{dir}}/nginx.pid;
error_log {{dir}}/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path {{dir}}/tmp/client_body;
  proxy_temp_path       {{dir}}/tmp/proxy;
  fastcgi_temp_path     {{dir}}/tmp/fastcgi;
  uwsgi_temp_path       {{dir}}/tmp/uwsgi;
  scgi_temp_path        {{dir}}/tmp/scgi;
  lua_package_path "/nonexistent/?.lua;;";
  init_worker_by_lua_block { math.randomseed(ngx.worker.pid() * ngx.now()) }
  upstream app {
    server 127.0.0.1:{{origin_port}};
    keepalive 512;
  }
  server {
    listen 127.0.0.1:{{port}};
    location / {
      set $up "";
      access_by_lua_block {
        -- request_id: keep a valid incoming id or make a UUID v4
        local rid = ngx.var.http_x_request_id
        if not rid or #rid > 200 or rid:find("[^%w%-_.:]") then
          local r = math.random
          rid = string.format("%08x-%04x-4%03x-%04x-%04x%08x", r(0, 0xffffffff), r(0, 0xffff),
            r(0, 0xfff), 0x8000 + r(0, 0x3fff), r(0, 0xffff), r(0, 0xffffffff))
          ngx.req.set_header("X-Request-Id", rid)
        end
        ngx.ctx.rid = rid
        -- router: first matching prefix rule picks the upstream
        local uri = ngx.var.uri
        if uri:sub(1, 1) == "/" then ngx.var.up = "app" end
        -- headers: one request header
        ngx.req.set_header("X-Env", "prod")
      }
      header_filter_by_lua_block {
        ngx.header["X-Served-By"] = "nginx"
        ngx.header["X-Request-Id"] = ngx.ctx.rid
      }
      proxy_pass http://$up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
"""

for _conns in (50, 256):
    SCENARIOS.append({
        "name": "lua-5B-c%d" % _conns,
        "path": "/",
        "connections": _conns,
        "luaproxy": LUAPROXY_LUA,
        "nginx": NGINX_LUA,
        "per_mib": False,
    })

# --- shared dict: one incr per request (issue #12's "a shared-dict incr per request") ------
# luaproxy: proxy.shared.hits:incr in a route handler (the request phase); nginx + lua:
# ngx.shared.hits:incr in access_by_lua_block. "/" then proxies to the origin (5 B); "/local"
# answers "ok" from Lua (no upstream), so the dict and the Lua call weigh more in the figure;
# "/noop" answers the same without the incr, the baseline that isolates the incr's cost.
# Both dicts are 10m; one key (1 worker each: no lock contention, see tests/unit/bench_shdict.c
# for that).
LUAPROXY_SHDICT = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  shared = { hits = "10m" },
  routes = {
    { match = { prefix = "/noop" }, handler = function(req)
        return req:respond(200, "ok")
      end },
    { match = { prefix = "/local" }, handler = function(req)
        proxy.shared.hits:incr("hits", 1, 0)
        return req:respond(200, "ok")
      end },
    { match = { prefix = "/" }, upstream = "app", handler = function(req)
        proxy.shared.hits:incr("hits", 1, 0)
      end },
  },
  log = { access = false },
}
"""

NGINX_SHDICT = NGINX_PLAIN.replace(
    "worker_processes 1;\n",
    "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n"
    "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
    "worker_processes 1;\n").replace(
    "  access_log off;\n",
    "  access_log off;\n"
    "  lua_shared_dict hits 10m;\n").replace(
    "    location / {\n",
    "    location /noop {\n"
    "      content_by_lua_block { ngx.print(\"ok\") }\n"
    "    }\n"
    "    location /local {\n"
    "      content_by_lua_block {\n"
    "        ngx.shared.hits:incr(\"hits\", 1, 0)\n"
    "        ngx.print(\"ok\")\n"
    "      }\n"
    "    }\n"
    "    location / {\n"
    "      access_by_lua_block { ngx.shared.hits:incr(\"hits\", 1, 0) }\n")
assert NGINX_SHDICT.count("ngx.shared") == 2

for _name, _path, _note in (
        ("shdict-incr-5B-c50", "/", "one shared-dict incr per request, then proxied"),
        ("shdict-incr-local-c50", "/local", "one shared-dict incr per request, answered from Lua"),
        ("shdict-noop-local-c50", "/noop", "the same answer from Lua without the incr: "
         "CPU/req of shdict-incr-local minus this one is the incr's own cost")):
    SCENARIOS.append({
        "name": _name,
        "path": _path,
        "connections": 50,
        "luaproxy": LUAPROXY_SHDICT,
        "nginx": NGINX_SHDICT,
        "per_mib": False,
        "note": _note + " (proxy.shared vs ngx.shared)",
    })

# --- balancing policies: one upstream of three targets, nginx round robin as the peer --
# The harness starts one origin, listening on 127.0.0.1 only. Three distinct target
# addresses reach it: 127.0.0.1 and two spellings of the IPv4-mapped IPv6 address of
# 127.0.0.1 (the proxies connect with AF_INET6 sockets; the kernel delivers the connection
# to the IPv4 listener). luaproxy keys balancing and health by the address text, so these
# are three targets with their own pools, balancer slots and health; nginx gets the same
# three servers. hash uses hash_on = "ip": every wrk connection comes from 127.0.0.1, so
# one target takes every request; the figure is the cost of hashing the key and the
# Maglev lookup, not of the spread.
POLICY_TARGETS = ('"127.0.0.1:{{origin_port}}", "[::ffff:127.0.0.1]:{{origin_port}}", '
                  '"[::ffff:7f00:1]:{{origin_port}}"')

LUAPROXY_POLICY = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { %s }, balance = "%s", keepalive = 512 } },
  routes = { { match = { prefix = "/" }, upstream = "app" } },
  log = { access = false },
}
"""

NGINX_POLICY_RR = NGINX_PLAIN.replace(
    "    server 127.0.0.1:{{origin_port}};\n",
    "    server 127.0.0.1:{{origin_port}};\n"
    "    server [::ffff:127.0.0.1]:{{origin_port}};\n"
    "    server [::ffff:7f00:1]:{{origin_port}};\n")
assert NGINX_POLICY_RR != NGINX_PLAIN

for _policy in ("round_robin", "least_conn", "p2c", "hash"):
    SCENARIOS.append({
        "name": "policy-%s-c50" % _policy,
        "path": "/",
        "connections": 50,
        "luaproxy": LUAPROXY_POLICY % (POLICY_TARGETS, _policy),
        "nginx": NGINX_POLICY_RR,
        "per_mib": False,
        "note": "3 targets (one origin, three addresses); luaproxy balance = %s, nginx round "
                "robin" % _policy,
    })

# --- TLS termination: the same RSA-2048 certificate (made by the harness), TLS 1.2/1.3 with
# the same ciphers (Mozilla intermediate for 1.2; OpenSSL's 1.3 suites on both), 1 worker
# each. "keep-alive" reuses connections (the cost of the records); "full handshake" sends
# Connection: close with resumption off on both sides (tickets and caches), so every
# request pays a full handshake; "resumed" uses bench/tls_resume.py, which resumes every
# connection from the session of the one before (with tickets, the default on both).
TLS_CIPHERS = ("ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:"
               "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:"
               "ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305:"
               "DHE-RSA-AES128-GCM-SHA256:DHE-RSA-AES256-GCM-SHA384:DHE-RSA-CHACHA20-POLY1305")

LUAPROXY_TLS = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}",
               tls = { cert = "{{cert}}", key = "{{key}}"%s } } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = { { match = { prefix = "/" }, upstream = "app" } },
  log = { access = false },
}
"""

NGINX_TLS = NGINX_PLAIN.replace(
    "    listen 127.0.0.1:{{port}};\n",
    "    listen 127.0.0.1:{{port}} ssl;\n"
    "    ssl_certificate {{cert}};\n"
    "    ssl_certificate_key {{key}};\n"
    "    ssl_protocols TLSv1.2 TLSv1.3;\n"
    "    ssl_ciphers " + TLS_CIPHERS + ";\n"
    "    ssl_prefer_server_ciphers off;\n"
    "%s")
assert NGINX_TLS != NGINX_PLAIN
NGINX_TLS_RESUME = NGINX_TLS % ("    ssl_session_cache shared:SSL:10m;\n"
                                "    ssl_session_tickets on;\n")
NGINX_TLS_FULL = NGINX_TLS % ("    ssl_session_cache off;\n"
                              "    ssl_session_tickets off;\n")
LUAPROXY_TLS_RESUME = LUAPROXY_TLS % ""
LUAPROXY_TLS_FULL = LUAPROXY_TLS % ", session_tickets = false, session_cache = 0"

for _label, _path, _per_mib in (BODIES[0], BODIES[2]):
    SCENARIOS.append({
        "name": "tls-keepalive-%s-c50" % _label,
        "path": _path,
        "connections": 50,
        "scheme": "https",
        "luaproxy": LUAPROXY_TLS_RESUME,
        "nginx": NGINX_TLS_RESUME,
        "per_mib": _per_mib,
        "note": "TLS keep-alive: CPU per request includes the records (compare plain-%s-c50)"
                % _label,
    })
SCENARIOS.append({
    "name": "tls-handshake-full-c50",
    "path": "/",
    "connections": 50,
    "scheme": "https",
    "headers": ["Connection: close"],
    "luaproxy": LUAPROXY_TLS_FULL,
    "nginx": NGINX_TLS_FULL,
    "per_mib": False,
    "note": "a new connection and a full TLS handshake per request (resumption off on both)",
})
SCENARIOS.append({
    "name": "tls-handshake-resumed-c8",
    "path": "/",
    "connections": 8,
    "scheme": "https",
    "client": "tls_resume",
    "luaproxy": LUAPROXY_TLS_RESUME,
    "nginx": NGINX_TLS_RESUME,
    "per_mib": False,
    "note": "a new connection per request, resuming the previous session "
            "(bench/tls_resume.py; see resumed_share in the JSON)",
})

# --- HTTP/2 over TLS (#17): h2load -c 50 -m 10 (bench/h2load_run.py) through each proxy's
# h2 listener (ALPN h2), the same certificate and ciphers as the TLS scenarios, HTTP/1.1 to
# the origin on both. nginx 1.22 spells it `listen ... ssl http2`.
LUAPROXY_H2 = LUAPROXY_TLS_RESUME.replace('key = "{{key}}" } } },',
                                          'key = "{{key}}" }, http2 = true } },')
assert LUAPROXY_H2 != LUAPROXY_TLS_RESUME
NGINX_H2 = NGINX_TLS_RESUME.replace("listen 127.0.0.1:{{port}} ssl;",
                                    "listen 127.0.0.1:{{port}} ssl http2;")
assert NGINX_H2 != NGINX_TLS_RESUME
SCENARIOS.append({
    "name": "h2-small-c50-m10",
    "path": "/fixed?size=100",
    "connections": 50,
    "streams": 10,
    "scheme": "https",
    "client": "h2load",
    "luaproxy": LUAPROXY_H2,
    "nginx": NGINX_H2,
    "per_mib": False,
    "note": "h2load -c 50 -m 10 over TLS (ALPN h2); latency columns: h2load's mean",
})

# The idle HTTP/2 memory test (IDLE_H2, bench/idle_h2.py): the h2 templates above, TLS on
# both, fresh processes; each connection completes one GET, then stays silent.
IDLE_H2 = {
    "connections": 3000,
    "path": "/",
    "luaproxy": LUAPROXY_H2,
    "nginx": NGINX_H2,
}

# --- a regex per request: proxy.re.match against string.find (luaproxy), and ngx.re.match
# against string.find (nginx + lua), on the request path. The regex's cost per request is
# the CPU/req of re-* minus that of find-* (same proxy, same run).
LUAPROXY_MATCH = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = { { match = { prefix = "/" }, upstream = "app",
    handler = function(req)
      MATCH_LUAPROXY
    end } },
  log = { access = false },
}
"""

NGINX_MATCH = NGINX_LUA.split("    location / {")[0] + """\
    location / {
      access_by_lua_block {
        MATCH_NGINX
      }
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
"""

MATCHES = {
    "re": ('local m = proxy.re.match(req:path(), [[^/(?<seg>[a-z0-9_-]*)]], "jo") '
           'if not m then return req:respond(500, "no match") end',
           'local m = ngx.re.match(ngx.var.uri, [[^/(?<seg>[a-z0-9_-]*)]], "jo") '
           'if not m then return ngx.exit(500) end'),
    "find": ('if not string.find(req:path(), "^/([a-z0-9_-]*)") then '
             'return req:respond(500, "no match") end',
             'if not string.find(ngx.var.uri, "^/([a-z0-9_-]*)") then return ngx.exit(500) end'),
}
for _kind, (_lp, _ngx) in MATCHES.items():
    SCENARIOS.append({
        "name": "%s-5B-c50" % _kind,
        "path": "/",
        "connections": 50,
        "luaproxy": LUAPROXY_MATCH.replace("MATCH_LUAPROXY", _lp),
        "nginx": NGINX_MATCH.replace("MATCH_NGINX", _ngx),
        "per_mib": False,
        "note": "one %s on the path per request, in a route handler / access_by_lua_block"
                % ("regex match (proxy.re.match / ngx.re.match, named capture)"
                   if _kind == "re" else "string.find with a capture"),
    })

# The idle keep-alive memory test uses these templates (fresh processes).
IDLE = {
    "connections": 10000,
    "path": "/",
    "luaproxy": LUAPROXY_PLAIN,
    "nginx": NGINX_PLAIN,
}

# --- an auth HTTP call per request (proxy.http vs ngx.socket.tcp) -----------------------
# Each request first makes a GET to a local "auth service" (the origin's "/") over a
# pooled keep-alive connection, checks its status, then goes upstream. luaproxy: a route
# handler with proxy.http.request (lua/luaproxy/http.lua: the engine's llhttp parser over
# proxy.tcp). nginx: access_by_lua_block with the minimal HTTP/1.1 GET an OpenResty user
# writes without lua-resty-http (not in Debian): ngx.socket.tcp, status line and header
# lines by receive("*l"), the body by Content-Length, setkeepalive.
LUAPROXY_AUTH = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = { {
    match = { prefix = "/" }, upstream = "app",
    handler = function(req)
      local res, err = proxy.http.request { url = "http://127.0.0.1:{{origin_port}}/",
        headers = { Authorization = "Bearer bench" }, timeout = 1,
        keepalive = { idle_timeout = 60, pool_size = 64 } }
      if not res then return req:respond(503, err) end
      if res.status ~= 200 then return req:respond(403, "denied") end
    end,
  } },
  log = { access = false },
}
"""

NGINX_AUTH = NGINX_PLAIN.replace("worker_processes 1;", """\
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;""", 1).replace("""    location / {
""", """    location / {
      access_by_lua_block {
        local sock = ngx.socket.tcp()
        sock:settimeouts(1000, 1000, 1000)
        local ok, err = sock:connect("127.0.0.1", {{origin_port}})
        if not ok then return ngx.exit(503) end
        ok, err = sock:send("GET / HTTP/1.1\\r\\nHost: 127.0.0.1:{{origin_port}}\\r\\n"
          .. "Authorization: Bearer bench\\r\\nUser-Agent: nginx-lua\\r\\n\\r\\n")
        if not ok then return ngx.exit(503) end
        local line = sock:receive("*l")
        if not line then return ngx.exit(503) end
        local status = tonumber(line:sub(10, 12))
        local len, keep = 0, true
        while true do
          local h = sock:receive("*l")
          if not h then return ngx.exit(503) end
          if h == "" then break end
          local name, value = h:match("^([^:]+):%s*(.-)%s*$")
          if name then
            name = name:lower()
            if name == "content-length" then len = tonumber(value)
            elseif name == "connection" and value:lower() == "close" then keep = false end
          end
        end
        if len > 0 and not sock:receive(len) then return ngx.exit(503) end
        if keep then sock:setkeepalive(60000, 64) else sock:close() end
        if status ~= 200 then return ngx.exit(403) end
      }
""", 1)
assert "access_by_lua_block" in NGINX_AUTH and "ngx_http_lua_module" in NGINX_AUTH

SCENARIOS.append({
    "name": "lua-auth-call-5B-c50",
    "path": "/",
    "connections": 50,
    "luaproxy": LUAPROXY_AUTH,
    "nginx": NGINX_AUTH,
    "per_mib": False,
    "note": "an HTTP GET to a local auth service per request, pooled (proxy.http vs "
            "ngx.socket.tcp), then upstream",
})

# --- Redis: one GET per request over a pooled connection, answered locally ---------------
# "services": ["redis"] makes the harness start redis-server (CPU_LOAD, no persistence)
# with bench:key = 64 bytes. luaproxy: proxy.redis.connect + get + set_keepalive in a route
# handler. nginx (no lua-resty-redis in Debian): the same steps written the way
# lua-resty-redis does them on ngx.socket.tcp (the request built as a table of pieces and
# sent as one, the bulk read as receive(len) then receive(2), keep-alive after).
LUAPROXY_REDIS = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = { { match = { prefix = "/" }, handler = function(req)
    if req:path() == "/local" then return req:respond(200, "{{redis_value}}") end
    local red, err = proxy.redis.connect { port = {{redis_port}}, timeout = 1000 }
    if not red then return req:respond(502, err) end
    local v
    v, err = red:get("bench:key")
    if not v then return req:respond(502, tostring(err)) end
    red:set_keepalive(60000, 512)
    return req:respond(200, v)
  end } },
  log = { access = false },
}
"""

NGINX_REDIS = NGINX_LUA[:NGINX_LUA.index("  upstream app {")] + """\
  server {
    listen 127.0.0.1:{{port}};
    location / {
      content_by_lua_block {
        if ngx.var.uri == "/local" then return ngx.print("{{redis_value}}") end
        local sock = ngx.socket.tcp()
        sock:settimeouts(1000, 1000, 1000)
        local ok, err = sock:connect("127.0.0.1", {{redis_port}})
        if not ok then ngx.status = 502 return ngx.print(err) end
        local args = { "get", "bench:key" }
        local req = { "*", #args, "\\r\\n" }
        for i = 1, #args do
          local a = args[i]
          req[#req + 1] = "$"
          req[#req + 1] = #a
          req[#req + 1] = "\\r\\n"
          req[#req + 1] = a
          req[#req + 1] = "\\r\\n"
        end
        ok, err = sock:send(req)
        if not ok then ngx.status = 502 return ngx.print(err) end
        local line
        line, err = sock:receive()
        if not line then ngx.status = 502 return ngx.print(err) end
        local size = tonumber(string.sub(line, 2))
        if string.byte(line) ~= 36 or not size or size < 0 then
          ngx.status = 502 return ngx.print("bad reply")
        end
        local data
        data, err = sock:receive(size)
        if not data then ngx.status = 502 return ngx.print(err) end
        local crlf
        crlf, err = sock:receive(2)
        if not crlf then ngx.status = 502 return ngx.print(err) end
        sock:setkeepalive(60000, 512)
        ngx.print(data)
      }
    }
  }
}
"""

SCENARIOS.append({
    "name": "redis-get-c50",
    "path": "/redis",
    "connections": 50,
    "services": ["redis"],
    "luaproxy": LUAPROXY_REDIS,
    "nginx": NGINX_REDIS,
    "per_mib": False,
    "note": "a Redis GET per request (pooled connection), answered locally with its 64 bytes",
})
SCENARIOS.append({
    "name": "redis-baseline-c50",
    "path": "/local",
    "connections": 50,
    "services": ["redis"],
    "luaproxy": LUAPROXY_REDIS,
    "nginx": NGINX_REDIS,
    "per_mib": False,
    "note": "the same 64 bytes answered by the same handler without Redis: redis-get minus "
            "this is the cost of the GET",
})

# --- Protection: rate_limit (#14) next to nginx's limit_req in the same position ----------
# One key (the client address), a rate no request reaches: every request pays the decision
# and is proxied. luaproxy: the bundled rate_limit plugin (local: the shared dict's atomic
# GCRA; redis: one EVALSHA per request on a pooled connection). nginx: limit_req with
# nodelay (its leaky bucket in a shared zone, the same algorithm). The cost over no plugin
# is this CPU/req minus plain-5B-c50's, in the same run.
LUAPROXY_RATE_LIMIT = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  shared = { rate_limit = "10m" },
  routes = {
    { match = { prefix = "/" }, upstream = "app",
      plugins = { { name = "rate_limit", rate = 100000000, burst = 1000000, headers = false } } },
  },
  log = { access = false },
}
"""
LUAPROXY_RATE_LIMIT_REDIS = LUAPROXY_RATE_LIMIT.replace(
    "  routes = {\n",
    "  routes = {\n"
    "    { match = { prefix = \"/redis\" }, upstream = \"app\", strip_prefix = true,\n"
    "      plugins = { { name = \"rate_limit\", rate = 100000000, burst = 1000000, headers = false,\n"
    "                    policy = \"redis\", redis = { port = {{redis_port}}, timeout = 1000 } } } },\n")
assert LUAPROXY_RATE_LIMIT_REDIS.count("redis_port") == 1

NGINX_RATE_LIMIT = NGINX_PLAIN.replace(
    "  access_log off;\n",
    "  access_log off;\n"
    "  limit_req_zone $binary_remote_addr zone=rl:10m rate=100000000r/s;\n").replace(
    "    location / {\n",
    "    location /redis/ {\n"
    "      limit_req zone=rl burst=1000000 nodelay;\n"
    "      proxy_pass http://o/;\n"
    "      proxy_http_version 1.1;\n"
    "      proxy_set_header Connection \"\";\n"
    "    }\n"
    "    location / {\n"
    "      limit_req zone=rl burst=1000000 nodelay;\n")
assert NGINX_RATE_LIMIT.count("limit_req") == 3

SCENARIOS.append({
    "name": "rate-limit-local-5B-c50",
    "path": "/",
    "connections": 50,
    "luaproxy": LUAPROXY_RATE_LIMIT,
    "nginx": NGINX_RATE_LIMIT,
    "per_mib": False,
    "note": "rate_limit (local policy, one key) vs limit_req nodelay, then proxied; "
            "minus plain-5B-c50 is the limiter's cost",
})
SCENARIOS.append({
    "name": "rate-limit-redis-5B-c50",
    "path": "/redis/",
    "connections": 50,
    "services": ["redis"],
    "luaproxy": LUAPROXY_RATE_LIMIT_REDIS,
    "nginx": NGINX_RATE_LIMIT,
    "per_mib": False,
    "note": "rate_limit with the redis policy (one EVALSHA per request, pooled) vs nginx's "
            "local limit_req (nginx has no Redis limiter in Debian): report only",
})

# --- ip_filter with 100,000 denied prefixes (none matching the client) --------------------
# luaproxy: the bundled ip_filter (one binary search over the flattened prefixes); nginx:
# the geo module (its radix tree) and `if ($blocked)`, the efficient way to deny that many.
_IPF_PREFIXES = ["%d.%d.%d.0/24" % (10 + i % 100, (i // 100) % 256, i % 256)
                 for i in range(100000)]
LUAPROXY_IP_FILTER = """\
local deny = {}
for i = 0, 99999 do
  deny[i + 1] = string.format("%d.%d.%d.0/24", 10 + i % 100, math.floor(i / 100) % 256, i % 256)
end
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = { { match = { prefix = "/" }, upstream = "app",
               plugins = { { name = "ip_filter", deny = deny } } } },
  log = { access = false },
}
"""
NGINX_IP_FILTER = NGINX_PLAIN.replace(
    "  access_log off;\n",
    "  access_log off;\n"
    "  geo $blocked {\n    default 0;\n" + "".join("    %s 1;\n" % p for p in _IPF_PREFIXES)
    + "  }\n").replace(
    "    location / {\n",
    "    location / {\n"
    "      if ($blocked) { return 403; }\n")

SCENARIOS.append({
    "name": "ip-filter-100k-5B-c50",
    "path": "/",
    "connections": 50,
    "luaproxy": LUAPROXY_IP_FILTER,
    "nginx": NGINX_IP_FILTER,
    "per_mib": False,
    "note": "ip_filter with 100,000 denied /24s (the client in none) vs nginx geo + if; "
            "minus plain-5B-c50 is the filter's cost",
})

# --- routing at scale (issue #22): the cost of finding the route, flat in N ----------------
# luaproxy builds N routes in a loop (a literal table of 100k entries is past LuaJIT's
# constant limit); nginx gets N literal `location`s. Every route strips its prefix, so both
# send "/" to the origin; the request names the last route. 1 worker each, as above.
LUAPROXY_ROUTES_HEAD = """\
local routes = {}
"""

LUAPROXY_ROUTES_TAIL = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = routes,
  log = { access = false },
  lua = { phase_timeout = 60 }, -- evaluating 100k routes may take more than 1 s
}
"""

NGINX_ROUTES_HEAD = """\
{{user}}
worker_processes 1;
worker_rlimit_nofile {{nofile}};
pid {{dir}}/nginx.pid;
error_log {{dir}}/error.log warn;
events { worker_connections 16384; }
http {
  access_log off;
  client_body_temp_path {{dir}}/tmp/client_body;
  proxy_temp_path       {{dir}}/tmp/proxy;
  fastcgi_temp_path     {{dir}}/tmp/fastcgi;
  uwsgi_temp_path       {{dir}}/tmp/uwsgi;
  scgi_temp_path        {{dir}}/tmp/scgi;
  server_names_hash_max_size 65536;
  server_names_hash_bucket_size 128;
  upstream o {
    server 127.0.0.1:{{origin_port}};
    keepalive 512;
  }
"""

NGINX_PROXY = "proxy_pass http://o/; proxy_http_version 1.1; proxy_set_header Connection \"\";"


def _prefix_routes(n):
    lua = LUAPROXY_ROUTES_HEAD + (
        "for i = 1, %d do routes[i] = { match = { prefix = \"/r\" .. i .. \"/\" }, "
        "upstream = \"app\", strip_prefix = true } end\n" % n) + LUAPROXY_ROUTES_TAIL
    locs = "".join("    location /r%d/ { %s }\n" % (i, NGINX_PROXY) for i in range(1, n + 1))
    ngx = NGINX_ROUTES_HEAD + "  server {\n    listen 127.0.0.1:{{port}};\n" + locs + "  }\n}\n"
    return lua, ngx


for _n in (1, 1000, 10000, 100000):
    _lua, _ngx = _prefix_routes(_n)
    SCENARIOS.append({
        "name": "route-prefix-last-of-%d" % _n,
        "path": "/r%d/" % _n,
        "connections": 50,
        "luaproxy": _lua,
        "nginx": _ngx,
        "per_mib": False,
        "note": "the last of %d prefix routes (issue #22)" % _n,
    })

# 10,000 hosts x 10 prefix routes each; wrk picks a random host and path per request
# (bench/wrk_random_route.lua). A catch-all answers the harness's sanity GET.
_lua = LUAPROXY_ROUTES_HEAD + """\
for h = 1, 10000 do
  for p = 1, 10 do
    routes[#routes + 1] = { match = { host = "h" .. h .. ".test", prefix = "/p" .. p .. "/" },
                            upstream = "app", strip_prefix = true }
  end
end
routes[#routes + 1] = { match = { prefix = "/" }, upstream = "app" }
""" + LUAPROXY_ROUTES_TAIL
_servers = ["  server {\n    listen 127.0.0.1:{{port}} default_server;\n"
            "    location / { proxy_pass http://o; proxy_http_version 1.1; "
            "proxy_set_header Connection \"\"; }\n  }\n"]
for _h in range(1, 10001):
    _servers.append("  server {\n    listen 127.0.0.1:{{port}};\n    server_name h%d.test;\n%s  }\n"
                    % (_h, "".join("    location /p%d/ { %s }\n" % (p, NGINX_PROXY)
                                   for p in range(1, 11))))
SCENARIOS.append({
    "name": "route-hosts-10k-x10-random",
    "path": "/",
    "connections": 50,
    "script": "wrk_random_route.lua",
    "luaproxy": _lua,
    "nginx": NGINX_ROUTES_HEAD + "".join(_servers) + "}\n",
    "per_mib": False,
    "note": "10,000 hosts x 10 routes, random host and path per request (issue #22)",
})

# 1,000 regex routes, the request matching the last. "anchored": ^/reN/\d+$ (luaproxy files
# each under its literal head /reN/, so only the last is run); "unanchored": /reN/\d+$ with
# no head, so every regex runs for every request, as nginx runs its regex locations in order.
# The last route is ^/fixed$ (the origin's path), with the query ?size=5.
# The unanchored kind also at N = 1, 100 and 10,000 (luaproxy scans them with one Hyperscan
# prefilter, in chunks of 128 regexes, and runs PCRE2 only on the candidates it names).
for _kind, _fmt, _n in (("anchored", "^/re%d/\\\\d+$", 1000), ("unanchored", "/re%d/\\\\d+$", 1),
                        ("unanchored", "/re%d/\\\\d+$", 100),
                        ("unanchored", "/re%d/\\\\d+$", 1000),
                        ("unanchored", "/re%d/\\\\d+$", 10000)):
    _lua = LUAPROXY_ROUTES_HEAD + (
        "for i = 1, %d do routes[i] = { match = { regex = \"%s\" }, upstream = \"app\" } end\n"
        % (_n - 1, (_fmt % 0).replace("re0", "re\" .. i .. \""))) + \
        "routes[%d] = { match = { regex = \"^/fixed$\" }, upstream = \"app\" }\n" % _n + \
        LUAPROXY_ROUTES_TAIL
    _locs = "".join("    location ~ %s { proxy_pass http://o; proxy_http_version 1.1; "
                    "proxy_set_header Connection \"\"; }\n" % ((_fmt % i).replace("\\\\", "\\"))
                    for i in range(1, _n))
    _locs += ("    location ~ ^/fixed$ { proxy_pass http://o; proxy_http_version 1.1; "
              "proxy_set_header Connection \"\"; }\n")
    SCENARIOS.append({
        "name": "route-regex-%d-%s" % (_n, _kind),
        "path": "/fixed?size=5",
        "connections": 50,
        "luaproxy": _lua,
        "nginx": NGINX_ROUTES_HEAD + "  server {\n    listen 127.0.0.1:{{port}};\n" + _locs
                 + "  }\n}\n",
        "per_mib": False,
        # the prefilter is compiled after start (PCRE2 alone meanwhile): measure it compiled
        "wait_compile": True,
        "note": "%d regex routes (%s), the request matches the last (issue #22)" % (_n, _kind),
    })

# --- metrics on vs off (issue #16): the same plain proxy with metrics.enabled = false, and
# with the defaults (on) plus an admin API (GET /metrics is not scraped during the run).
# Compare cpu_us_per_req of the two luaproxy rows: metrics must cost <= 0.3 us per request.
LUAPROXY_METRICS_OFF = LUAPROXY_PLAIN.replace(
    "  log = { access = false },\n",
    "  log = { access = false },\n  metrics = { enabled = false },\n")
LUAPROXY_METRICS_ON = LUAPROXY_PLAIN.replace(
    "  log = { access = false },\n",
    "  log = { access = false },\n  metrics = { enabled = true },\n")
for _label, _cfg in (("off", LUAPROXY_METRICS_OFF), ("on", LUAPROXY_METRICS_ON)):
    SCENARIOS.append({
        "name": "metrics-%s-5B-c50" % _label,
        "path": "/",
        "connections": 50,
        "luaproxy": _cfg,
        "nginx": NGINX_PLAIN,
        "per_mib": False,
        "note": "metrics %s (per-route counters, latency histograms; compare the two "
                "luaproxy rows)" % _label,
    })


# --- JSON access log on vs off (issue 16): the same fields, one JSON object per line, to a
# file. luaproxy: log.json (made in C, handed to the log writer thread in 32 KiB chunks or
# every 0.1 s); nginx: log_format escape=json with the same members and access_log with the
# same buffering (buffer=32k flush=100ms). Numbers are unquoted on both sides. Their cost is
# log-json minus log-off for each proxy, both in the same run.
LUAPROXY_JSONLOG = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = { { match = { prefix = "/" }, upstream = "app" } },
  log = {
    access = "{{dir}}/access.json",
    flush = 0.1,
    json = {
      time = "$time_iso8601", remote_addr = "$remote_addr", request = "$request",
      method = "$request_method", uri = "$uri", host = "$host", status = "$status",
      body_bytes_sent = "$body_bytes_sent", request_time = "$request_time",
      upstream_addr = "$upstream_addr", upstream_response_time = "$upstream_response_time",
      referer = "$http_referer", user_agent = "$http_user_agent",
    },
  },
}
"""

NGINX_JSONLOG = NGINX_PLAIN.replace(
    "  access_log off;\n",
    "  log_format jsonl escape=json '{\"body_bytes_sent\":$body_bytes_sent,\"host\":\"$host\",'\n"
    "    '\"method\":\"$request_method\",\"referer\":\"$http_referer\",'\n"
    "    '\"remote_addr\":\"$remote_addr\",\"request\":\"$request\",'\n"
    "    '\"request_time\":$request_time,\"status\":$status,\"time\":\"$time_iso8601\",'\n"
    "    '\"upstream_addr\":\"$upstream_addr\",'\n"
    "    '\"upstream_response_time\":$upstream_response_time,\"uri\":\"$request_uri\",'\n"
    "    '\"user_agent\":\"$http_user_agent\"}';\n"
    "  access_log {{dir}}/access.json jsonl buffer=32k flush=100ms;\n")

for _label, _path in (("5B", "/"), ("16KiB", "/fixed?size=16384")):
    SCENARIOS.append({
        "name": "log-off-%s-c50" % _label,
        "path": _path,
        "connections": 50,
        "luaproxy": LUAPROXY_PLAIN,
        "nginx": NGINX_PLAIN,
        "per_mib": False,
        "note": "access log off: the baseline of log-json-%s-c50" % _label,
    })
    SCENARIOS.append({
        "name": "log-json-%s-c50" % _label,
        "path": _path,
        "connections": 50,
        "luaproxy": LUAPROXY_JSONLOG,
        "nginx": NGINX_JSONLOG,
        "per_mib": False,
        "note": "JSON access log (13 members) to a file; its cost is this minus log-off-%s-c50"
                % _label,
    })

# --- trace context and span export (issue #16, docs/tracing.md) ---------------------------
# plain-5B-c50 runs with tracing's defaults (ids per request and traceparent upstream, no
# export). trace-off turns tracing off; trace-export also sends one SERVER span and one
# CLIENT span per request to a collector, which is the origin itself (lp_origin answers the
# POST to "/" with 200), on loopback, every request sampled. luaproxy's CPU us/req in
# trace-export minus trace-off is the whole cost of tracing with export; plain minus
# trace-off the cost of the ids and headers alone. nginx runs its plain config as the
# control (its figure should not move between the three).
LUAPROXY_TRACE_OFF = LUAPROXY_PLAIN.replace(
    "  log = { access = false },\n",
    "  log = { access = false },\n  tracing = { enabled = false },\n")
LUAPROXY_TRACE_EXPORT = LUAPROXY_PLAIN.replace(
    "  log = { access = false },\n",
    "  log = { access = false },\n"
    "  tracing = { export = { endpoint = \"http://127.0.0.1:{{origin_port}}/\" } },\n")
assert LUAPROXY_TRACE_OFF != LUAPROXY_PLAIN and LUAPROXY_TRACE_EXPORT != LUAPROXY_PLAIN
for _name, _tpl, _note in (
        ("trace-off-5B-c50", LUAPROXY_TRACE_OFF, "tracing.enabled = false: no ids, no headers"),
        ("trace-export-5B-c50", LUAPROXY_TRACE_EXPORT,
         "every request's spans POSTed as OTLP JSON to a collector on loopback")):
    SCENARIOS.append({
        "name": _name,
        "path": "/",
        "connections": 50,
        "luaproxy": _tpl,
        "nginx": NGINX_PLAIN,
        "per_mib": False,
        "note": _note,
    })

# --- Protection: waf (#14), the default rule set --------------------------------------
# Two requests a WAF sees all day: a browser's page view (query, cookies, the usual
# headers) and a 4 KiB JSON API call. Each is sent to a route with the waf plugin
# (/waf/..., default rules, paranoia 1, block mode) and to one without (the base), in the
# same run: the plugin's cost is the CPU/req of the first minus the second. nginx has no
# WAF in this comparison (Debian's ModSecurity is issue #20's): it proxies both paths, as a
# reference for the base.
LUAPROXY_WAF = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = {
    { match = { prefix = "/waf/" }, upstream = "app", strip_prefix = true,
      plugins = { { name = "waf" } } },
    { match = { prefix = "/" }, upstream = "app" },
  },
  log = { access = false },
}
"""
NGINX_WAF = NGINX_PLAIN.replace(
    "    location / {\n",
    "    location /waf/ {\n"
    "      proxy_pass http://o/;\n"
    "      proxy_http_version 1.1;\n"
    "      proxy_set_header Connection \"\";\n"
    "    }\n"
    "    location / {\n")
assert NGINX_WAF.count("location") == 2

WAF_BROWSER_HEADERS = [
    "User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36",
    "Accept: text/html,application/xhtml+xml,application/xml;q=0.9,image/avif,image/webp,*/*;q=0.8",
    "Accept-Language: en-GB,en;q=0.9",
    "Accept-Encoding: gzip, deflate, br",
    "Referer: https://shop.example.com/category/men/jackets?page=2",
    "Cookie: _ga=GA1.2.1843471095.1701698312; _gid=GA1.2.1290412301.1701698312; "
    "session=eyJ1aWQiOjEyMzQ1LCJjYXJ0IjpbMTIsMzRdfQ.ZW5kLW9mLXNlc3Npb24tdG9rZW4tMDEyMzQ1Njc4OQ; "
    "csrftoken=8f2b7c1e9a0d4e6f8b2c7d1e9a0f4b6c8d2e7f1a9b0c4d6e8f2a7b1c9d0e4f6a; lang=en-GB",
    "Upgrade-Insecure-Requests: 1",
]
_items = ",".join('{"sku":"SKU-%04d","qty":%d,"price":%d.99,"name":"Product number %d"}'
                  % (i, i % 4 + 1, i, i) for i in range(1, 40))
_json = ('{"customer":{"name":"Mary O\'Neil","email":"m@example.com"},"items":[%s],'
         '"note":"Please deliver after 5pm; it\'s a gift.","pad":""}' % _items)
WAF_JSON_4K = _json.replace('"pad":""', '"pad":"%s"' % ("x" * (4096 - len(_json))))
assert len(WAF_JSON_4K) == 4096
WAF_JSON_SETUP = ('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                  'wrk.body = %s' % json.dumps(WAF_JSON_4K))

for _name, _path, _setup, _hdrs, _note in [
    ("waf-browser-get", "/?id=123&utm_source=newsletter&utm_medium=email&ref=home",
     None, WAF_BROWSER_HEADERS, "a browser's GET (query, cookies, 8 headers)"),
    ("waf-json-4KiB-post", "/", WAF_JSON_SETUP, [],
     "a 4 KiB JSON POST (160 values)"),
]:
    for _base in (False, True):
        SCENARIOS.append({
            "name": _name + ("-base" if _base else "") + "-c50",
            "path": _path if _base else "/waf" + _path,
            "connections": 50,
            "headers": _hdrs,
            "wrk_setup": _setup,
            "luaproxy": LUAPROXY_WAF,
            "nginx": NGINX_WAF,
            "per_mib": False,
            "note": (_note + ", without the plugin: the base for the waf's cost") if _base
                    else (_note + " through the waf default rules (minus -base: its cost)"),
        })

# --- mirror and transform (issue #15, mirror lane) -----------------------------------------
# One pair of processes. luaproxy: /mirror/ copies every request (100%) to a fast target (the
# origin itself) with the bundled mirror plugin; /tr-headers/ and /tr-json/ run the transform
# plugin (header rules; JSON body rules on a 4 KiB POST); "/" is the same proxying without a
# plugin, the base each is measured against (CPU us/req of the scenario minus its -base).
# nginx: its `mirror` module for /mirror/ (a subrequest per request to the same origin);
# /tr-*/ are plain proxying there (nginx has no JSON body rewriting without Lua): its
# figures for those are context only.
LUAPROXY_GATEWAY = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = {
    { match = { prefix = "/mirror/" }, upstream = "app", strip_prefix = true,
      plugins = { { name = "mirror", url = "http://127.0.0.1:{{origin_port}}",
                    max_concurrent = 1024, timeout = 5, headers = { ["X-Mirrored-By"] = "lp" } } } },
    { match = { prefix = "/tr-headers/" }, upstream = "app", strip_prefix = true,
      plugins = { { name = "transform",
        request = { headers = { remove = { "X-Debug" }, rename = { ["X-Old"] = "X-New" },
                                replace = { ["User-Agent"] = "gw ($client_ip)" },
                                add = { ["X-Client"] = "$client_ip", ["X-Via"] = "gateway" } } },
        response = { headers = { remove = { "X-Powered-By" }, add = { ["X-Gateway"] = "lp" } } } } } },
    { match = { prefix = "/tr-json/" }, upstream = "app", strip_prefix = true,
      plugins = { { name = "transform",
        request = { json = { remove = { "note" }, rename = { ["customer.email"] = "customer.mail" },
                             set = { ["meta.by"] = "$client_ip", ["meta.v"] = 2 } } } } } },
    { match = { prefix = "/" }, upstream = "app" },
  },
  log = { access = false },
}
"""
NGINX_GATEWAY = NGINX_PLAIN.replace(
    "    location / {\n",
    "    location /mirror/ {\n"
    "      mirror /_mirror;\n"
    "      proxy_pass http://o/;\n"
    "      proxy_http_version 1.1;\n"
    "      proxy_set_header Connection \"\";\n"
    "    }\n"
    "    location = /_mirror {\n"
    "      internal;\n"
    "      proxy_pass http://o$request_uri;\n"
    "      proxy_http_version 1.1;\n"
    "      proxy_set_header Connection \"\";\n"
    "      proxy_set_header X-Mirrored-By nginx;\n"
    "    }\n"
    "    location /tr-headers/ {\n"
    "      proxy_pass http://o/;\n"
    "      proxy_http_version 1.1;\n"
    "      proxy_set_header Connection \"\";\n"
    "    }\n"
    "    location /tr-json/ {\n"
    "      proxy_pass http://o/;\n"
    "      proxy_http_version 1.1;\n"
    "      proxy_set_header Connection \"\";\n"
    "    }\n"
    "    location / {\n")
assert NGINX_GATEWAY.count("location") == 5

_GW_HEADERS = ["X-Debug: 1", "X-Old: o", "User-Agent: bench"]
for _name, _path, _setup, _hdrs, _note in [
    ("gateway-base-get", "/", None, _GW_HEADERS,
     "GET 5 B through no plugin: the base of mirror-100pct and transform-headers"),
    ("mirror-100pct-get", "/mirror/", None, _GW_HEADERS,
     "every request mirrored to a fast target (luaproxy: mirror plugin; nginx: mirror "
     "module); minus gateway-base-get: the mirror's cost"),
    ("transform-headers-get", "/tr-headers/", None, _GW_HEADERS,
     "transform: 4 request and 2 response header rules (nginx: plain proxying, context only)"),
    ("gateway-base-json-4KiB-post", "/", WAF_JSON_SETUP, [],
     "a 4 KiB JSON POST through no plugin: the base of transform-json"),
    ("transform-json-4KiB-post", "/tr-json/", WAF_JSON_SETUP, [],
     "transform: decode, 4 JSON field rules, encode, req:set_body (nginx: plain proxying, "
     "context only)"),
]:
    SCENARIOS.append({
        "name": _name + "-c50",
        "path": _path,
        "connections": 50,
        "headers": _hdrs,
        "wrk_setup": _setup,
        "luaproxy": LUAPROXY_GATEWAY,
        "nginx": NGINX_GATEWAY,
        "per_mib": False,
        "note": _note,
    })

# --- authentication (#15): key_auth and jwt, next to nginx + Lua doing the same -------------
# One template pair, four paths: "/" without a plugin (the base, same processes), "/key/"
# through key_auth (the key in X-Api-Key, mapped to a consumer, hidden, X-Consumer-Id set),
# "/jwt/" through jwt with an HS256 and an RS256 key (by kid; the token in Authorization:
# Bearer, exp checked, sub to X-Consumer-Id, Authorization removed). nginx + lua:
# access_by_lua_block doing the same; for JWT the anchor is bench/jwt_anchor.lua
# (lua-resty-core's ngx.base64 and OpenSSL through the FFI: a keyed EVP_MAC context for
# HS256, EVP_DigestVerify with a cached EVP_PKEY for RS256). The tokens below are signed with
# a bench-only key pair (bench/jwt_bench.pub.pem; the private half was thrown away) and
# expire in 2100. A plugin's cost is its CPU/req minus auth-base-5B-c50's, in the same run.
import os as _os

_BENCH_DIR = _os.path.dirname(_os.path.abspath(__file__))
AUTH_API_KEY = "bench-key-6c1f0e2a"
AUTH_HS_SECRET = "bench-hmac-secret-0123456789abcdef"
AUTH_HS256_TOKEN = ("eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6ImhzIn0."
                    "eyJzdWIiOiJiZW5jaC11c2VyIiwiaXNzIjoiYmVuY2giLCJleHAiOjQxMDI0NDQ4MDB9."
                    "tPxCbUtrl37C3g2Ss1z9CJai6MHFZx4CZgZe54N2lhk")
AUTH_RS256_TOKEN = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzIn0."
    "eyJzdWIiOiJiZW5jaC11c2VyIiwiaXNzIjoiYmVuY2giLCJleHAiOjQxMDI0NDQ4MDB9."
    "iApmwaQmZ3rpRxZZuzFIVVXZysS7mfiB1Pk1NQSUzKJ6NiFyN3rshwcnFQ8lB-D7DoaMMZdbBp3Ng_sL_OA6-coX"
    "KltHwr1QFdzeK0VCp6sCOsRSjJ4Kg4DlvX9aFK_uMhuRpZqJdC4i-lWpprpe3W-eQahlUaq3ZSJ68a9ESfx_HTLw"
    "KwSVlwVJIAVw_-tDua3Hd6ssS2p_MAM1ZxvjEAIV6yX7MP6ZsoAVPdiMaPqjIJkczz2ozvVgapBFfF4Cc5LVMu9f"
    "OVC92cner2w84yM9CdQ_M8XYwU-VHLWLFExDU4CJQu6G2mos1uX2dlXlNEu5mIZSqzq-qc1cdNGUfg")
_AUTH_PEM = _os.path.join(_BENCH_DIR, "jwt_bench.pub.pem")

LUAPROXY_AUTHN = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = {
    { match = { prefix = "/key/" }, upstream = "app", strip_prefix = true,
      plugins = { { name = "key_auth", keys = { ["%(key)s"] = "bench-user" } } } },
    { match = { prefix = "/jwt/" }, upstream = "app", strip_prefix = true,
      plugins = { { name = "jwt", keys = { { kid = "hs", alg = "HS256", secret = "%(secret)s" },
                                           { kid = "rs", alg = "RS256", pem_file = "%(pem)s" } } } } },
    { match = { prefix = "/" }, upstream = "app" },
  },
  log = { access = false },
}
""" % {"key": AUTH_API_KEY, "secret": AUTH_HS_SECRET, "pem": _AUTH_PEM}

NGINX_AUTHN = NGINX_PLAIN.replace(
    "worker_processes 1;",
    "load_module /usr/lib/nginx/modules/ndk_http_module.so;\n"
    "load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;\n"
    "worker_processes 1;").replace(
    "  access_log off;\n",
    "  access_log off;\n"
    "  lua_package_path \"%(dir)s/?.lua;;\";\n"
    "  init_by_lua_block {\n"
    "    KEYS = { [\"%(key)s\"] = \"bench-user\" }\n"
    "    local f = assert(io.open(\"%(pem)s\"))\n"
    "    require(\"jwt_anchor\").setup(\"%(secret)s\", f:read(\"*a\"))\n"
    "    f:close()\n"
    "  }\n" % {"dir": _BENCH_DIR, "key": AUTH_API_KEY, "secret": AUTH_HS_SECRET,
               "pem": _AUTH_PEM}).replace(
    "    location / {\n",
    "    location /key/ {\n"
    "      access_by_lua_block {\n"
    "        local k = ngx.var.http_x_api_key\n"
    "        local c = k and KEYS[k]\n"
    "        if not c then\n"
    "          ngx.header[\"WWW-Authenticate\"] = 'Key realm=\"nginx\"'\n"
    "          return ngx.exit(401)\n"
    "        end\n"
    "        ngx.ctx.consumer = c\n"
    "        ngx.req.clear_header(\"X-Api-Key\")\n"
    "        ngx.req.set_header(\"X-Consumer-Id\", c)\n"
    "      }\n"
    "      proxy_pass http://o/;\n"
    "      proxy_http_version 1.1;\n"
    "      proxy_set_header Connection \"\";\n"
    "    }\n"
    "    location /jwt/ {\n"
    "      access_by_lua_block { require(\"jwt_anchor\").access() }\n"
    "      proxy_pass http://o/;\n"
    "      proxy_http_version 1.1;\n"
    "      proxy_set_header Connection \"\";\n"
    "    }\n"
    "    location / {\n")
assert NGINX_AUTHN.count("location") == 3

for _name, _path, _hdrs, _note in [
    ("auth-base-5B-c50", "/", [], "no auth plugin: the base of the auth-* rows (same processes)"),
    ("key-auth-5B-c50", "/key/", ["X-Api-Key: " + AUTH_API_KEY],
     "key_auth (header key, consumer header, key hidden) vs access_by_lua doing the same; "
     "minus auth-base is its cost"),
    ("jwt-hs256-5B-c50", "/jwt/", ["Authorization: Bearer " + AUTH_HS256_TOKEN],
     "jwt HS256 vs bench/jwt_anchor.lua (lua-resty-core + OpenSSL FFI)"),
    ("jwt-rs256-5B-c50", "/jwt/", ["Authorization: Bearer " + AUTH_RS256_TOKEN],
     "jwt RS256 (RSA-2048, key cached) vs the same anchor: OpenSSL's RSA verify dominates"),
]:
    SCENARIOS.append({
        "name": _name,
        "path": _path,
        "connections": 50,
        "headers": _hdrs,
        "luaproxy": LUAPROXY_AUTHN,
        "nginx": NGINX_AUTHN,
        "per_mib": False,
        "note": _note,
    })

# --- issue #15, traffic: compression (gzip of a 16 KiB JSON body) and a CORS preflight ---
# The origin's /json?size=16384 is 16 KiB of JSON records (varied ids, names, numbers).
# luaproxy: the compression plugin, gzip only, at the level nginx uses; nginx: `gzip on`
# at the same level (zlib defaults on both: 32 KiB window, memLevel 8). The harness also
# records the compressed body's size per proxy (body_bytes in the JSON).
LUAPROXY_GZIP = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = {
    { match = { prefix = "/json" }, upstream = "app",
      plugins = { { name = "compression", codings = { "gzip" }, gzip_level = LEVEL } } },
    { match = { prefix = "/" }, upstream = "app" },
  },
  log = { access = false },
}
"""
NGINX_GZIP = NGINX_PLAIN.replace("  access_log off;\n", """\
  access_log off;
  gzip on;
  gzip_comp_level LEVEL;
  gzip_types application/json;
  gzip_proxied any;
  gzip_vary on;
  gzip_min_length 256;
""")
for _level in (1, 6):
    SCENARIOS.append({
        "name": "gzip%d-json-16KiB-c50" % _level,
        "path": "/json?size=16384",
        "connections": 50,
        "headers": ["Accept-Encoding: gzip"],
        "body_bytes_headers": ["Accept-Encoding: gzip"],
        "luaproxy": LUAPROXY_GZIP.replace("LEVEL", str(_level)),
        "nginx": NGINX_GZIP.replace("LEVEL", str(_level)),
        "per_mib": False,
        "note": "gzip level %d of a 16 KiB JSON answer (compression plugin / nginx gzip on)"
                % _level,
    })
SCENARIOS.append({
    "name": "json-16KiB-identity-c50",
    "path": "/json?size=16384",
    "connections": 50,
    "luaproxy": LUAPROXY_GZIP.replace("LEVEL", "1"),
    "nginx": NGINX_GZIP.replace("LEVEL", "1"),
    "per_mib": False,
    "note": "the same 16 KiB JSON without Accept-Encoding: the base for gzip's cost",
})

# The same preflight answered locally: the cors plugin against a location that checks the
# origin (a map) and answers with add_header + return 204.
LUAPROXY_CORS = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  upstreams = { app = { targets = { "127.0.0.1:{{origin_port}}" }, keepalive = 512 } },
  routes = { { match = { prefix = "/" }, upstream = "app",
    plugins = { { name = "cors", origins = { "https://app.example.com" }, credentials = true,
                  methods = { "GET", "POST", "PUT" }, allow_headers = { "Content-Type", "X-Token" },
                  max_age = 600 } } } },
  log = { access = false },
}
"""
NGINX_CORS = NGINX_PLAIN.replace("  server {\n", """\
  map $http_origin $cors_origin {
    default "";
    "https://app.example.com" $http_origin;
  }
  server {
""").replace("""    location / {
      proxy_pass http://o;""", """    location / {
      if ($request_method = OPTIONS) {
        add_header Access-Control-Allow-Origin $cors_origin;
        add_header Access-Control-Allow-Credentials true;
        add_header Access-Control-Allow-Methods "GET, POST, PUT";
        add_header Access-Control-Allow-Headers "Content-Type, X-Token";
        add_header Access-Control-Max-Age 600;
        add_header Vary Origin;
        return 204;
      }
      proxy_pass http://o;""")
SCENARIOS.append({
    "name": "cors-preflight-c50",
    "path": "/",
    "connections": 50,
    "headers": ["Origin: https://app.example.com", "Access-Control-Request-Method: PUT",
                "Access-Control-Request-Headers: content-type"],
    "wrk_setup": 'wrk.method = "OPTIONS"',
    "luaproxy": LUAPROXY_CORS,
    "nginx": NGINX_CORS,
    "per_mib": False,
    "note": "a CORS preflight answered by the proxy (cors plugin / add_header + return 204)",
})

# --- response cache (issue #13): hits from memory and a miss that stores, against nginx's
# proxy_cache (which serves hits from files in the page cache). lp_origin sends no
# Cache-Control: both cache 200s for an hour (default_ttl / proxy_cache_valid). Coalescing
# of cold misses (1000 at once, one origin request) is measured by bench/cache_cold.py.
LUAPROXY_CACHE = LUAPROXY_PLAIN.replace(
    '  routes = { { match = { prefix = "/" }, upstream = "app" } },\n',
    '  cache = { zones = { b = { memory = "256m", max_object_size = "8m" } } },\n'
    '  routes = { { match = { prefix = "/" }, upstream = "app",\n'
    '               plugins = { { name = "cache", zone = "b", default_ttl = { [200] = 3600 } } } } },\n')
assert LUAPROXY_CACHE != LUAPROXY_PLAIN
NGINX_CACHE = NGINX_PLAIN.replace(
    "  upstream o {\n",
    "  proxy_cache_path {{dir}}/cache levels=1:2 keys_zone=b:64m max_size=1g inactive=1h;\n"
    "  upstream o {\n").replace(
    "      proxy_pass http://o;\n",
    "      proxy_pass http://o;\n"
    "      proxy_cache b;\n"
    "      proxy_cache_valid 200 1h;\n"
    "      proxy_cache_lock on;\n"
    "      add_header Cache-Status $upstream_cache_status;\n")
assert NGINX_CACHE != NGINX_PLAIN

for _label, _path, _per_mib in BODIES:
    SCENARIOS.append({
        "name": "cache-hit-%s-c50" % _label,
        "path": _path,
        "connections": 50,
        "luaproxy": LUAPROXY_CACHE,
        "nginx": NGINX_CACHE,
        "per_mib": _per_mib,
        "note": "every request a hit (the first stored it)",
    })

# Every request a new key: a miss, proxied and stored; against the plain proxy on the same
# unique URLs (cache-miss-store minus plain-unique: the cost of storing).
# Each wrk run (the warm-up, every round) starts its own keys (its start second and a table
# address): a run that numbered them from 1 again asked for the keys the last one stored, so
# most of its "misses" were hits.
UNIQUE_SETUP = ('local base = os.time() .. tostring({}):gsub("%W", "")\nlocal n = 0\n'
                'request = function()\n  n = n + 1\n'
                '  return wrk.format("GET", "/fixed?size=5&k=" .. base .. "-" .. n)\nend')
for _name, _lp, _ng, _note in [
    ("cache-miss-store-5B-c50", LUAPROXY_CACHE, NGINX_CACHE,
     "every request a new key: looked up, proxied, stored"),
    ("plain-unique-5B-c50", LUAPROXY_PLAIN, NGINX_PLAIN,
     "the same unique URLs through the plain proxy (the base for cache-miss-store)"),
]:
    SCENARIOS.append({
        "name": _name,
        "path": "/fixed?size=5",
        "connections": 50,
        "wrk_setup": UNIQUE_SETUP,
        "luaproxy": _lp,
        "nginx": _ng,
        "per_mib": False,
        "note": _note,
    })

# --- the cache's disk tier (issue #13, cachedisk lane): hits on entries that are on disk
# only. 400 keys of 16 KiB (6.4 MiB) in a zone whose memory holds about 60 of them: most hits
# read the file back on the threadpool, check it and promote it (pushing another out). nginx
# serves every hit from its files (page cache). The first pass (warm-up) stores them.
LUAPROXY_CACHE_DISK = LUAPROXY_PLAIN.replace(
    '  routes = { { match = { prefix = "/" }, upstream = "app" } },\n',
    '  cache = { zones = { b = { memory = "1m", max_object_size = "1m",\n'
    '                            disk = { path = "{{dir}}/cache", size = "1g" } } } },\n'
    '  routes = { { match = { prefix = "/" }, upstream = "app",\n'
    '               plugins = { { name = "cache", zone = "b", default_ttl = { [200] = 3600 } } } } },\n')
assert LUAPROXY_CACHE_DISK != LUAPROXY_PLAIN
SCENARIOS.append({
    "name": "cache-disk-hit-16KiB-c50",
    "path": "/fixed?size=16384",
    "connections": 50,
    "wrk_setup": ('request = function()\n'
                  '  return wrk.format("GET", "/fixed?size=16384&k=" .. math.random(1, 400))\n'
                  'end'),
    "luaproxy": LUAPROXY_CACHE_DISK,
    "nginx": NGINX_CACHE,
    "per_mib": False,
    "note": "400 keys, ~60 fit memory: most hits read their file back (nginx: all from files)",
})

# --- 100k keys in a 64 MiB zone (issue #13): every request one of 100,000 keys in turn (5 B
# bodies), so that after the warm-up and the first round every key is stored; the RSS column
# after the run, less plain-unique-5B-c50's, over 100,000 is the memory per entry (both
# proxies: nginx keeps its keys in a 64 MiB keys_zone and the bodies in files).
LUAPROXY_CACHE_64M = LUAPROXY_CACHE.replace('memory = "256m"', 'memory = "64m"')
assert LUAPROXY_CACHE_64M != LUAPROXY_CACHE
SCENARIOS.append({
    "name": "cache-100k-keys-5B-c50",
    "path": "/fixed?size=5",
    "connections": 50,
    "wrk_setup": ('local n = 0\nrequest = function()\n  n = n %% 100000 + 1\n'
                  '  return wrk.format("GET", "/fixed?size=5&k=" .. n)\nend').replace("%%", "%"),
    "luaproxy": LUAPROXY_CACHE_64M,
    "nginx": NGINX_CACHE,
    "per_mib": False,
    "note": "100,000 keys in turn in a 64 MiB zone: RSS minus plain-unique's, / 100k = per entry",
})
