"""Benchmark scenarios, as data.

A scenario is a dict:
  name         unique short name, used in tables and in results/latest.json
  path         URL path (with query) that wrk requests
  connections  wrk connection count
  luaproxy     luaproxy config template (a Lua file returning a table)
  nginx        nginx config template (a whole nginx.conf)
  per_mib      optional: also report CPU ms per MiB relayed (large bodies)
  note         optional: one line printed above the scenario's table

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

# The idle keep-alive memory test uses these templates (fresh processes).
IDLE = {
    "connections": 10000,
    "path": "/",
    "luaproxy": LUAPROXY_PLAIN,
    "nginx": NGINX_PLAIN,
}
