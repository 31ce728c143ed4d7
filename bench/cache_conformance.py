#!/usr/bin/env python3
"""The public HTTP caching conformance suite (http-cache-tests, the suite behind
cache-tests.fyi, from npm) against luaproxy's cache plugin and nginx's proxy_cache, side by
side, 1 worker each, in front of the suite's own origin server. Prints, per proxy, how many
of the suite's required tests pass (a test also fails when a test it depends on fails, as
on cache-tests.fyi) and, with --list, the failing ones. A figure for the closing note of
issue #13, never a CI test (the suite comes from npm, and takes minutes).

  python3 bench/cache_conformance.py [--list] [--only luaproxy|nginx]

The suite is installed into bench/cache_tests/node_modules by `npm install` (the version
pinned in bench/cache_tests/package.json) when it is not there yet; CACHE_TESTS_DIR points at
another copy. luaproxy's config: the cache plugin with its defaults (shared cache, no
heuristic freshness, no configured stale windows), passive health checks off (see LP_CONF). nginx's: what the suite's own docker
image runs (proxy_cache, proxy_cache_revalidate on).
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
LUAPROXY = os.environ.get("LUAPROXY", os.path.join(ROOT, "build", "luaproxy"))
NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
NODE = os.environ.get("NODE", "node")
SUITE_HOME = os.path.join(HERE, "cache_tests")

LP_CONF = """\
return {
  workers = 1,
  listen = { { address = "127.0.0.1:{{port}}" } },
  -- The suite closes connections on purpose (stale-if-error checks): passive health checks
  -- would eject the only target and answer 503 for what follows (nginx never marks its
  -- only server down), which measures the health checks, not the cache.
  upstreams = { o = { targets = { "127.0.0.1:{{origin_port}}" },
                      health = { passive = { failures = 0 } } } },
  cache = { zones = { ct = { memory = "64m" } } },
  routes = { { match = { prefix = "/" }, upstream = "o",
               plugins = { { name = "cache", zone = "ct" } } } },
  log = { access = false },
}
"""

NGINX_CONF = """\
{{user}}
worker_processes 1;
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
  proxy_cache_path {{dir}}/cache levels=1:2 keys_zone=ct:8m max_size=1000m inactive=600m;
  server {
    listen 127.0.0.1:{{port}};
    location / {
      proxy_pass http://127.0.0.1:{{origin_port}};
      proxy_cache ct;
      proxy_cache_revalidate on;
    }
  }
}
"""


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, timeout=15):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("port %d did not open" % port)


def render(template, **kw):
    for k, v in kw.items():
        template = template.replace("{{%s}}" % k, str(v))
    return template


def suite_dir():
    d = os.environ.get("CACHE_TESTS_DIR")
    if d:
        return d
    d = os.path.join(SUITE_HOME, "node_modules", "http-cache-tests")
    if not os.path.isdir(d):
        subprocess.run(["npm", "install", "--no-audit", "--no-fund"], cwd=SUITE_HOME,
                       check=True, timeout=600)
    return d


def start(argv, **kw):
    return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, **kw)


def run_suite(suite, port, out):
    env = dict(os.environ, npm_config_base="http://127.0.0.1:%d" % port, npm_config_id="",
               npm_package_config_id="")
    with open(out, "w") as f:
        subprocess.run([NODE, "--no-warnings", "cli.mjs"], cwd=suite, env=env, stdout=f,
                       stderr=subprocess.DEVNULL, check=True, timeout=1800)


def score(suite, results, listing):
    argv = [NODE, os.path.join(SUITE_HOME, "score.mjs"), suite, results]
    if listing:
        argv.append("--list")
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout
    lines = out.splitlines()
    return json.loads(lines[0]), lines[1:]


def main():
    listing = "--list" in sys.argv
    only = sys.argv[sys.argv.index("--only") + 1] if "--only" in sys.argv else None
    suite = suite_dir()
    d = tempfile.mkdtemp(prefix="cache-conformance-")
    procs = []
    try:
        origin_port = free_port()
        env = dict(os.environ, npm_config_protocol="http", npm_config_port=str(origin_port),
                   npm_config_pidfile=os.path.join(d, "server.pid"))
        procs.append(start([NODE, "server/server.mjs"], cwd=suite, env=env))
        wait_port(origin_port)
        proxies = []
        if only in (None, "luaproxy"):
            port = free_port()
            with open(os.path.join(d, "lp.lua"), "w") as f:
                f.write(render(LP_CONF, port=port, origin_port=origin_port))
            procs.append(start([LUAPROXY, "-c", os.path.join(d, "lp.lua")]))
            proxies.append(("luaproxy", port))
        if only in (None, "nginx") and os.path.exists(NGINX):
            port = free_port()
            os.makedirs(os.path.join(d, "tmp"), exist_ok=True)
            with open(os.path.join(d, "nginx.conf"), "w") as f:
                f.write(render(NGINX_CONF, port=port, origin_port=origin_port, dir=d,
                               user="user root;" if os.geteuid() == 0 else ""))
            procs.append(start([NGINX, "-c", os.path.join(d, "nginx.conf"), "-g",
                                "daemon off;"]))
            proxies.append(("nginx", port))
        for name, port in proxies:
            wait_port(port)
            results = os.path.join(d, name + ".json")
            run_suite(suite, port, results)
            s, failing = score(suite, results, listing)
            print("%-9s required tests passed: %d of %d" % (name, s["passed"], s["required"]))
            for line in failing:
                print("  " + line)
        published = os.path.join(suite, "results", "nginx.json")
        if os.path.exists(published):
            s, _ = score(suite, published, False)
            print("(the suite's published nginx results: %d of %d)" % (s["passed"], s["required"]))
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait(10)
                except ProcessLookupError:
                    pass
        shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
