#!/usr/bin/env python3
"""The shared dict's own cost, beside nginx + lua's ngx.shared: each proxy (1 worker,
pinned like run.sh's) answers GET /?n=N by timing N `incr` then N `get` on one key of a
10m dict in a JIT-compiled Lua loop (os.clock), and says ns per call. The two are asked in
alternation, ROUNDS times; medians and the ratio luaproxy / nginx are printed and written
to bench/results/shdict_loop.json. Unlike the wrk scenarios (bench/scenarios.py,
shdict-*), nothing else (HTTP, the Lua phase, proxying) is in the figure.

  python3 bench/shdict_loop.py          (ROUNDS=7, N=1000000; LUAPROXY, NGINX as run.sh)

Exit status 1 only when a proxy failed to start or answered wrongly; never because of the
figures."""
import http.client
import json
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as B  # noqa: E402

LOOP_LUA = """\
    local n = tonumber(%s) or 1000000
    local t0 = os.clock()
    for _ = 1, n do d:incr("hits", 1, 0) end
    local t1 = os.clock()
    for _ = 1, n do d:get("hits") end
    local t2 = os.clock()
    local out = string.format("incr %%.2f get %%.2f", (t1 - t0) * 1e9 / n, (t2 - t1) * 1e9 / n)
"""

LUAPROXY = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  shared = { hits = "10m" },
  lua = { phase_timeout = 60 },
  log = { access = false },
  routes = { { match = { prefix = "/" }, handler = function(req)
    local d = proxy.shared.hits
%s    return req:respond(200, out)
  end } },
}
""" % (LOOP_LUA % 'req:query("n")')

NGINX = """\
{{user}}
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
worker_processes 1;
worker_rlimit_nofile {{nofile}};
pid {{dir}}/nginx.pid;
error_log {{dir}}/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path {{dir}}/tmp/client_body;
  proxy_temp_path       {{dir}}/tmp/proxy;
  fastcgi_temp_path     {{dir}}/tmp/fastcgi;
  uwsgi_temp_path       {{dir}}/tmp/uwsgi;
  scgi_temp_path        {{dir}}/tmp/scgi;
  lua_shared_dict hits 10m;
  server {
    listen 127.0.0.1:{{port}};
    location / {
      content_by_lua_block {
        local d = ngx.shared.hits
%s        ngx.print(out)
      }
    }
  }
}
""" % (LOOP_LUA % "ngx.var.arg_n")


def ask(port, n):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.request("GET", "/?n=%d" % n)
        r = c.getresponse()
        body = r.read().decode()
    finally:
        c.close()
    m = re.match(r"incr ([\d.]+) get ([\d.]+)$", body)
    if r.status != 200 or not m:
        raise B.StartError("GET /?n=%d -> %d %r" % (n, r.status, body[:200]))
    return float(m.group(1)), float(m.group(2))


def main():
    s = B.settings()
    rounds = int(os.environ.get("ROUNDS", "7"))
    n = int(os.environ.get("N", "1000000"))
    procs = B.Procs(s["pidfile"])
    workdir = tempfile.mkdtemp(prefix="lp-shdict-loop-")
    out = {"rounds": rounds, "n": n, "runs": {"luaproxy": [], "nginx": []}}
    try:
        pxs = {name: B.start_proxy(s, procs, workdir, name, tpl, 0)
               for name, tpl in (("luaproxy", LUAPROXY), ("nginx", NGINX))}
        for name, px in pxs.items():
            ask(px.port, 1000)  # warm-up: the loops get compiled
        for _ in range(rounds):
            for name, px in pxs.items():
                out["runs"][name].append(ask(px.port, n))
    except B.StartError as e:
        print("error: %s" % e, file=sys.stderr)
        return 1
    finally:
        procs.stop_all()
    print("ns per call, median of %d x %d calls on one key (1 worker each)" % (rounds, n))
    print("         %10s %10s %9s" % ("luaproxy", "nginx", "lp/nginx"))
    out["median"] = {}
    for i, op in enumerate(("incr", "get")):
        lp = B.median([r[i] for r in out["runs"]["luaproxy"]])
        ng = B.median([r[i] for r in out["runs"]["nginx"]])
        out["median"][op] = {"luaproxy": lp, "nginx": ng, "ratio": B.ratio(lp, ng)}
        print("  %-6s %10.2f %10.2f %9.2f" % (op, lp, ng, B.ratio(lp, ng)))
    path = os.path.join(os.path.dirname(s["results"]), "shdict_loop.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1)
    print("results: %s" % os.path.relpath(path))
    return 0


if __name__ == "__main__":
    sys.exit(main())
